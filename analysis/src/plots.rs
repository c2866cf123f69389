//! Plots with plotters, each written as SVG and PNG. PNG text is drawn with DejaVu Sans embedded
//! from the `dejavu` crate (registered with plotters' `ab_glyph` font backend), so no system
//! fonts are needed; SVG text is left to the viewer's fonts.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::AnalysisError;

const FONT: &str = "sans-serif";

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A failure here surfaces as a plot error ("FontUnavailable") when text is drawn.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

fn er<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

pub fn color(i: usize) -> RGBColor {
    // Tableau 10, then its light companions (tab20): a default suite has about 15 variant
    // names, each keeps its own colour.
    const C: [RGBColor; 20] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(174, 199, 232),
        RGBColor(255, 187, 120),
        RGBColor(152, 223, 138),
        RGBColor(255, 152, 150),
        RGBColor(197, 176, 213),
        RGBColor(196, 156, 148),
        RGBColor(247, 182, 210),
        RGBColor(199, 199, 199),
        RGBColor(219, 219, 141),
        RGBColor(158, 218, 229),
    ];
    C[i % C.len()]
}

/// Something that draws itself on any backend.
pub trait Chart {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// A drawn plot.
#[derive(Debug, Clone)]
pub struct Plot {
    pub title: String,
    pub svg_path: PathBuf,
    pub png_path: PathBuf,
}

/// Draws `chart` into `dir/name.svg` and `dir/name.png`.
pub fn render(
    chart: &impl Chart,
    dir: &Path,
    name: &str,
    title: &str,
) -> Result<Plot, AnalysisError> {
    register_fonts();
    let perr = |message: String| AnalysisError::Plot {
        name: name.to_string(),
        message,
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, chart.size()).into_drawing_area();
        chart.draw(&root).map_err(perr)?;
        root.present().map_err(|e| perr(er(e)))?;
    }
    let svg_path = dir.join(format!("{name}.svg"));
    std::fs::write(&svg_path, &svg).map_err(|source| AnalysisError::Write {
        path: svg_path.clone(),
        source,
    })?;
    let png_path = dir.join(format!("{name}.png"));
    {
        let root = BitMapBackend::new(&png_path, chart.size()).into_drawing_area();
        chart.draw(&root).map_err(perr)?;
        root.present().map_err(|e| perr(er(e)))?;
    }
    Ok(Plot {
        title: title.to_string(),
        svg_path,
        png_path,
    })
}

/// Colours by variant name, the same in every plot of a report: variants are named without the
/// arguments their labels carry (`none reader=cpl3` is `none`), sorted, and given the palette in
/// order.
#[derive(Debug, Clone, Default)]
pub struct Palette(std::collections::BTreeMap<String, RGBColor>);

impl Palette {
    /// A palette over `variants` (labels; duplicates are fine).
    pub fn new<'a>(variants: impl IntoIterator<Item = &'a str>) -> Self {
        let names: std::collections::BTreeSet<&str> =
            variants.into_iter().map(variant_name).collect();
        Self(
            names
                .into_iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), color(i)))
                .collect(),
        )
    }

    /// The colour of `variant` (grey for one the palette does not know).
    pub fn of(&self, variant: &str) -> RGBColor {
        self.0
            .get(variant_name(variant))
            .copied()
            .unwrap_or(RGBColor(127, 127, 127))
    }
}

fn variant_name(label: &str) -> &str {
    label.split_once(' ').map_or(label, |(n, _)| n)
}

/// A unit for times in ns: the largest of ns, µs, ms, s that keeps `max_ns` at 1 or more.
pub fn time_unit(max_ns: f64) -> (&'static str, f64) {
    let a = max_ns.abs();
    if a >= 1e9 {
        ("s", 1e9)
    } else if a >= 1e6 {
        ("ms", 1e6)
    } else if a >= 1e3 {
        ("µs", 1e3)
    } else {
        ("ns", 1.0)
    }
}

/// 1-2-5 values (1, 2, 5, 10, 20, ...) within `lo..=hi` (both > 0).
pub fn ticks_125(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    if !(lo > 0.0 && hi >= lo && hi.is_finite()) {
        return out;
    }
    let mut e = lo.log10().floor() as i32 - 1;
    while 10f64.powi(e) <= hi * 1.0001 && out.len() < 64 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(e);
            if v >= lo * 0.9999 && v <= hi * 1.0001 {
                out.push(v);
            }
        }
        e += 1;
    }
    out
}

/// The 1-2-5 ticks just outside `lo` and `hi`, so the outermost ticks are on the axis.
fn tick_span(lo: f64, hi: f64) -> (f64, f64) {
    let lo_t = ticks_125(lo / 2.5, lo)
        .last()
        .copied()
        .unwrap_or(lo)
        .min(lo);
    let hi_t = ticks_125(hi, hi * 2.5)
        .first()
        .copied()
        .unwrap_or(hi)
        .max(hi);
    (lo_t, hi_t)
}

/// A tick label: up to 3 significant digits, no trailing zeros.
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    let s = if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn nice_max(v: f64) -> f64 {
    if v > 0.0 && v.is_finite() {
        v * 1.15
    } else {
        1.0
    }
}

/// Pixels a label of `text` needs at `size`-point DejaVu Sans (about 0.6 em per character).
fn text_px(text: &str, size: u32) -> u32 {
    (text.chars().count() as f64 * f64::from(size) * 0.6).ceil() as u32
}

/// Width of the label column of a horizontal chart.
fn label_area(labels: &[String]) -> u32 {
    labels
        .iter()
        .map(|l| text_px(l, 13))
        .max()
        .unwrap_or(0)
        .clamp(80, 520)
        + 16
}

/// The frame of a horizontal chart on a white `root`: caption, x axis `x0..x1` with
/// `x_label`, one unit-high slot per category along y, first category on top, labelled at the
/// left. `x_ticks`: explicit tick values (drawn by hand) or `None` for plotters' own.
#[allow(clippy::too_many_arguments)]
fn horizontal_chart<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    categories: &[String],
    x0: f64,
    x1: f64,
    x_ticks: Option<&[(f64, String)]>,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    root.fill(&WHITE).map_err(er)?;
    let n = categories.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(label_area(categories))
        .build_cartesian_2d(x0..x1, 0f64..n as f64)
        .map_err(er)?;
    let fmt = |v: &f64| tick_label(*v);
    let mut mesh = chart.configure_mesh();
    mesh.disable_y_mesh().y_labels(0).x_desc(x_label);
    if x_ticks.is_some() {
        mesh.disable_x_mesh().x_labels(0);
    } else {
        mesh.x_label_formatter(&fmt);
    }
    mesh.draw().map_err(er)?;
    if let Some(ticks) = x_ticks {
        draw_x_ticks(root, &chart, ticks, n as f64)?;
    }
    for (i, l) in categories.iter().enumerate() {
        let y = n as f64 - i as f64 - 0.5;
        let (x, py) = chart.backend_coord(&(x0, y));
        let style = TextStyle::from((FONT, 13).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center));
        root.draw(&Text::new(l.clone(), (x - 6, py), style))
            .map_err(er)?;
    }
    Ok(chart)
}

/// Grid lines and labels at the given x values (in chart coordinates) of a chart `0..ymax` high.
fn draw_x_ticks<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    ticks: &[(f64, String)],
    ymax: f64,
) -> Result<(), String> {
    for (x, label) in ticks {
        let (px, top) = chart.backend_coord(&(*x, ymax));
        let (_, bottom) = chart.backend_coord(&(*x, 0.0));
        root.draw(&PathElement::new(
            vec![(px, top), (px, bottom)],
            BLACK.mix(0.12),
        ))
        .map_err(er)?;
        let style = TextStyle::from((FONT, 12).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new(label.clone(), (px, bottom + 5), style))
            .map_err(er)?;
    }
    Ok(())
}

/// The series legend, boxed, at `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(er)
}

/// Horizontal bars, one slot per category (first on top). With one series each bar has its
/// category's colour (a variant's); with several, each series has a colour and a legend.
#[derive(Debug, Clone)]
pub struct Bars {
    pub title: String,
    pub x_label: String,
    pub categories: Vec<String>,
    /// Per category, with a single series.
    pub category_colors: Vec<RGBColor>,
    /// (series name, one value per category).
    pub series: Vec<(String, Vec<Option<f64>>)>,
}

impl Chart for Bars {
    fn size(&self) -> (u32, u32) {
        let per = (10 * self.series.len() as u32).max(20) + 8;
        (
            1000,
            (110 + per * self.categories.len() as u32).clamp(220, 4000),
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let xmax = nice_max(
            self.series
                .iter()
                .flat_map(|s| s.1.iter().flatten())
                .copied()
                .fold(0.0, f64::max),
        );
        let mut chart = horizontal_chart(
            root,
            &self.title,
            &self.x_label,
            &self.categories,
            0.0,
            xmax,
            None,
        )?;
        let n = self.categories.len() as f64;
        let k = self.series.len().max(1) as f64;
        let h = 0.8 / k;
        let single = self.series.len() == 1;
        for (j, (name, vals)) in self.series.iter().enumerate() {
            let sc = color(j);
            let cat_colors = &self.category_colors;
            chart
                .draw_series(vals.iter().enumerate().filter_map(|(i, v)| {
                    v.map(|v| {
                        let c = if single {
                            cat_colors.get(i).copied().unwrap_or(sc)
                        } else {
                            sc
                        };
                        let top = n - i as f64 - 0.1 - j as f64 * h;
                        Rectangle::new([(0.0, top), (v, top - h * 0.9)], c.filled())
                    })
                }))
                .map_err(er)?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], sc.filled()));
        }
        // Each bar's value at its end, so that a 0 reads as 0 and not as a missing bar.
        for (j, (_, vals)) in self.series.iter().enumerate() {
            for (i, v) in vals.iter().enumerate() {
                let Some(v) = v else { continue };
                let mid = n - i as f64 - 0.1 - j as f64 * h - h * 0.45;
                let (px, py) = chart.backend_coord(&(*v, mid));
                let style = TextStyle::from((FONT, 11).into_font())
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center));
                root.draw(&Text::new(tick_label(*v), (px + 4, py), style))
                    .map_err(er)?;
            }
        }
        if !single {
            draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        }
        Ok(())
    }
}

/// A line: its name, colour and (x, y) points.
pub type Series = (String, RGBColor, Vec<(f64, f64)>);

/// Lines (x, y) per series, each in its colour.
#[derive(Debug, Clone)]
pub struct Lines {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// x values are times in ns: the axis is in µs/ms as fits.
    pub x_time: bool,
    /// y values are times in ns: the axis is in µs/ms as fits.
    pub y_time: bool,
}

impl Chart for Lines {
    fn size(&self) -> (u32, u32) {
        (900, 520)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(er)?;
        let pts = || self.series.iter().flat_map(|s| s.2.iter());
        let (xu, xs) = if self.x_time {
            time_unit(pts().map(|p| p.0).fold(0.0, f64::max))
        } else {
            ("", 1.0)
        };
        let (yu, ys) = if self.y_time {
            time_unit(pts().map(|p| p.1).fold(0.0, f64::max))
        } else {
            ("", 1.0)
        };
        let (mut x0, mut x1) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| {
            (a.min(p.0 / xs), b.max(p.0 / xs))
        });
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 - x0 < 1e-9 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        let pad = (x1 - x0) * 0.05;
        let ymax = nice_max(pts().map(|p| p.1 / ys).fold(0.0, f64::max));
        let unit = |l: &str, u: &str| {
            if u.is_empty() {
                l.to_string()
            } else {
                format!("{l} ({u})")
            }
        };
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, 18))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d((x0 - pad).max(0.0)..(x1 + pad), 0f64..ymax)
            .map_err(er)?;
        chart
            .configure_mesh()
            .x_desc(unit(&self.x_label, xu))
            .y_desc(unit(&self.y_label, yu))
            .x_label_formatter(&|v: &f64| tick_label(*v))
            .y_label_formatter(&|v: &f64| tick_label(*v))
            .draw()
            .map_err(er)?;
        for (name, c, p) in &self.series {
            let c = *c;
            let p: Vec<(f64, f64)> = p.iter().map(|&(x, y)| (x / xs, y / ys)).collect();
            chart
                .draw_series(LineSeries::new(p.clone(), c.stroke_width(2)))
                .map_err(er)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 15, y)], c.stroke_width(2))
                });
            chart
                .draw_series(p.iter().map(|&q| Circle::new(q, 3, c.filled())))
                .map_err(er)?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
    }
}

/// Latency percentiles: x = latency (log scale, 1-2-5 ticks in µs/ms), y = percentile on a
/// -log10(1 - F) axis so that p50, p90, p99 and p99.9 are evenly spaced and the tail shows.
#[derive(Debug, Clone)]
pub struct Cdf {
    pub title: String,
    /// (series name, colour, CDF points (latency in ns, fraction <= latency)).
    pub series: Vec<Series>,
}

/// The y of fraction `f` on the percentile axis: -log10(1 - f), capped at p99.9.
fn pct_y(f: f64) -> f64 {
    -(1.0 - f).max(1e-3).log10()
}

impl Chart for Cdf {
    fn size(&self) -> (u32, u32) {
        (900, 520)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(er)?;
        let pts = || self.series.iter().flat_map(|s| s.2.iter());
        let vmax = pts().map(|p| p.0).fold(0.0, f64::max);
        let vmin = pts()
            .map(|p| p.0)
            .filter(|v| *v > 0.0)
            .fold(f64::MAX, f64::min);
        let (u, scale) = time_unit(vmax);
        let (lo, hi) = if vmin <= vmax {
            (vmin / scale, vmax / scale)
        } else {
            (1.0, 10.0)
        };
        // Whole 1-2-5 steps around the data, so the outermost ticks are on the axis.
        let (lo_t, hi_t) = tick_span(lo, hi);
        let (x0, x1) = (lo_t.log10(), hi_t.log10().max(lo_t.log10() + 0.1));
        let ymax = 3.0;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, 18))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, 0f64..ymax)
            .map_err(er)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .x_desc(format!("latency ({u}, log scale)"))
            .y_desc("percentile")
            .draw()
            .map_err(er)?;
        let ticks: Vec<(f64, String)> = ticks_125(lo_t, hi_t)
            .into_iter()
            .map(|v| (v.log10(), tick_label(v)))
            .collect();
        draw_x_ticks(root, &chart, &ticks, ymax)?;
        for (f, label) in [
            (0.0, "p0"),
            (0.5, "p50"),
            (0.9, "p90"),
            (0.99, "p99"),
            (0.999, "p99.9"),
        ] {
            let y = pct_y(f);
            let (left, py) = chart.backend_coord(&(x0, y));
            let (right, _) = chart.backend_coord(&(x1, y));
            let style = if label == "p99" || label == "p50" {
                BLACK.mix(0.45)
            } else {
                BLACK.mix(0.12)
            };
            root.draw(&PathElement::new(vec![(left, py), (right, py)], style))
                .map_err(er)?;
            let ts = TextStyle::from((FONT, 12).into_font())
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center));
            root.draw(&Text::new(label.to_string(), (left - 6, py), ts))
                .map_err(er)?;
        }
        let mut seen: Vec<RGBColor> = Vec::new();
        for (name, c, p) in &self.series {
            let c = *c;
            // The second series of one variant (other arguments) is drawn dashed, the third with
            // wider gaps, so they keep the variant's colour and still tell apart.
            let width = 3u32
                .saturating_sub(seen.iter().filter(|s| **s == c).count() as u32)
                .max(1);
            seen.push(c);
            // A step function: each bucket's upper value holds its fraction.
            let mut line = Vec::new();
            let mut prev = 0.0;
            for &(v, f) in p {
                let x = (v / scale).max(lo_t).log10();
                line.push((x, pct_y(prev)));
                line.push((x, pct_y(f)));
                prev = f;
            }
            let style = c.stroke_width(2);
            let drawn = if width == 3 {
                chart.draw_series(LineSeries::new(line, style))
            } else {
                chart.draw_series(DashedLineSeries::new(
                    line,
                    6,
                    2 + 3 * (3 - width as i32),
                    style,
                ))
            };
            drawn
                .map_err(er)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 15, y)], c.stroke_width(width))
                });
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
    }
}

/// Ratios with 95% CIs per category (horizontal, first on top) on a log axis with 1-2-5 ticks
/// and a reference line at 1; each point in its category's colour.
#[derive(Debug, Clone)]
pub struct ErrorBars {
    pub title: String,
    pub x_label: String,
    pub categories: Vec<String>,
    pub colors: Vec<RGBColor>,
    /// (lo, point, hi) per category, all > 0.
    pub points: Vec<(f64, f64, f64)>,
}

impl Chart for ErrorBars {
    fn size(&self) -> (u32, u32) {
        (
            1000,
            (110 + 26 * self.categories.len() as u32).clamp(200, 4000),
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let n = self.categories.len() as f64;
        let pos = |v: f64| v.is_finite() && v > 0.0;
        let lo = self
            .points
            .iter()
            .map(|p| p.0)
            .filter(|v| pos(*v))
            .fold(1.0, f64::min);
        let hi = self
            .points
            .iter()
            .map(|p| p.2)
            .filter(|v| pos(*v))
            .fold(1.0, f64::max);
        let (lo_t, hi_t) = tick_span(lo, hi);
        let (x0, x1) = (lo_t.log10(), hi_t.log10());
        let ticks: Vec<(f64, String)> = ticks_125(lo_t, hi_t)
            .into_iter()
            .map(|v| (v.log10(), tick_label(v)))
            .collect();
        let chart = horizontal_chart(
            root,
            &self.title,
            &self.x_label,
            &self.categories,
            x0,
            x1,
            Some(&ticks),
        )?;
        let (px, top) = chart.backend_coord(&(0.0, n));
        let (_, bottom) = chart.backend_coord(&(0.0, 0.0));
        root.draw(&PathElement::new(
            vec![(px, top), (px, bottom)],
            BLACK.mix(0.6).stroke_width(1),
        ))
        .map_err(er)?;
        for (i, &(l, p, h)) in self.points.iter().enumerate() {
            if !(pos(l) && pos(p) && pos(h)) {
                continue;
            }
            let c = self.colors.get(i).copied().unwrap_or(color(0));
            let y = n - i as f64 - 0.5;
            let (pl, py) = chart.backend_coord(&(l.log10(), y));
            let (ph, _) = chart.backend_coord(&(h.log10(), y));
            let (pp, _) = chart.backend_coord(&(p.log10(), y));
            root.draw(&PathElement::new(
                vec![(pl, py), (ph, py)],
                c.stroke_width(2),
            ))
            .map_err(er)?;
            for x in [pl, ph] {
                root.draw(&PathElement::new(
                    vec![(x, py - 5), (x, py + 5)],
                    c.stroke_width(2),
                ))
                .map_err(er)?;
            }
            root.draw(&Circle::new((pp, py), 5, c.filled()))
                .map_err(er)?;
        }
        Ok(())
    }
}

/// A file-name-safe form of `s`.
pub fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(80);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_render_svg_and_png() {
        let dir = crate::testutil::temp_dir("plots");
        let bars = Bars {
            title: "exits per op".into(),
            x_label: "exits/op".into(),
            categories: vec!["none".into(), "synthetic+all".into()],
            category_colors: vec![color(0), color(1)],
            series: vec![
                ("p1".into(), vec![Some(2.0), Some(0.5)]),
                ("p2".into(), vec![None, Some(1.0)]),
            ],
        };
        let p = render(&bars, &dir, "bars", "exits").unwrap();
        let svg = |p: &Plot| std::fs::read_to_string(&p.svg_path).unwrap();
        assert!(svg(&p).contains("<svg") && svg(&p).contains("synthetic+all"));
        let png = std::fs::read(&p.png_path).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let cdf = Cdf {
            title: "cdf".into(),
            series: vec![(
                "a".into(),
                color(0),
                vec![(1e4, 0.1), (1e5, 0.5), (2e6, 1.0)],
            )],
        };
        let p = render(&cdf, &dir, "cdf", "cdf").unwrap();
        // 1-2-5 ticks in ms over 10 µs..2 ms, and the p99 line.
        let text = svg(&p);
        let texts: Vec<&str> = text.lines().map(str::trim).collect();
        for t in [
            "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2", "p50", "p99",
        ] {
            assert!(texts.contains(&t), "no {t} in {text}");
        }
        assert!(text.contains("(ms, log scale)"));
        let lines = Lines {
            title: "scaling".into(),
            x_label: "vCPUs".into(),
            y_label: "time / op".into(),
            series: vec![("a".into(), color(0), vec![(1.0, 2e5), (2.0, 4e5)])],
            x_time: false,
            y_time: true,
        };
        let p = render(&lines, &dir, "lines", "scaling").unwrap();
        assert!(svg(&p).contains("time / op (µs)"), "{}", svg(&p));
        let eb = ErrorBars {
            title: "speed-up".into(),
            x_label: "x".into(),
            categories: vec!["a".into()],
            colors: vec![color(2)],
            points: vec![(0.9, 1.2, 1.5)],
        };
        render(&eb, &dir, "eb", "speed-up").unwrap();
        assert!(dir.join("eb.png").is_file() && dir.join("lines.svg").is_file());
    }

    #[test]
    fn ticks_are_1_2_5_and_units_fit() {
        assert_eq!(ticks_125(0.3, 12.0), vec![0.5, 1.0, 2.0, 5.0, 10.0]);
        assert_eq!(time_unit(251_189.0), ("µs", 1e3));
        assert_eq!(time_unit(22_899_495.0), ("ms", 1e6));
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(200.0), "200");
        let p = Palette::new(["none reader=cpl0", "hv-tlbflush", "none reader=cpl3"]);
        assert_eq!(p.of("none reader=cpl0"), p.of("none reader=cpl3"));
        assert_ne!(p.of("none"), p.of("hv-tlbflush"));
    }
}
