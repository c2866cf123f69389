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

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
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
    pub svg: String,
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
        svg,
        svg_path,
        png_path,
    })
}

fn width_for(categories: usize, per: u32) -> u32 {
    (200 + per * categories as u32).clamp(700, 2400)
}

fn nice_max(v: f64) -> f64 {
    if v > 0.0 && v.is_finite() {
        v * 1.15
    } else {
        1.0
    }
}

/// The frame of a per-category chart on a white `root`: caption, y axis 0..`ymax` with
/// `y_label`, one unit-wide slot per category along x, labelled under the axis.
fn category_chart<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    y_label: &str,
    categories: &[String],
    ymax: f64,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    root.fill(&WHITE).map_err(er)?;
    let n = categories.len();
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 20))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
        .map_err(er)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_label)
        .draw()
        .map_err(er)?;
    category_labels(root, &chart, categories)?;
    Ok(chart)
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

/// Grouped bars: one group per category, one bar per series.
#[derive(Debug, Clone)]
pub struct Bars {
    pub title: String,
    pub y_label: String,
    pub categories: Vec<String>,
    /// (series name, one value per category).
    pub series: Vec<(String, Vec<Option<f64>>)>,
}

impl Chart for Bars {
    fn size(&self) -> (u32, u32) {
        (
            width_for(self.categories.len(), 60 + 25 * self.series.len() as u32),
            520,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let ymax = nice_max(
            self.series
                .iter()
                .flat_map(|s| s.1.iter().flatten())
                .copied()
                .fold(0.0, f64::max),
        );
        let mut chart = category_chart(root, &self.title, &self.y_label, &self.categories, ymax)?;
        let k = self.series.len().max(1) as f64;
        let w = 0.8 / k;
        for (j, (name, vals)) in self.series.iter().enumerate() {
            let c = color(j);
            chart
                .draw_series(vals.iter().enumerate().filter_map(|(i, v)| {
                    v.map(|v| {
                        let x0 = i as f64 + 0.1 + j as f64 * w;
                        Rectangle::new([(x0, 0.0), (x0 + w * 0.9, v)], c.filled())
                    })
                }))
                .map_err(er)?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
    }
}

/// Lines (x, y) per series; `log_x` plots log10(x) with labels in x units.
#[derive(Debug, Clone)]
pub struct Lines {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

impl Chart for Lines {
    fn size(&self) -> (u32, u32) {
        (900, 520)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(er)?;
        let tx = |x: f64| if self.log_x { x.max(1e-9).log10() } else { x };
        let pts = || self.series.iter().flat_map(|s| s.1.iter());
        let (mut x0, mut x1) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| {
            (a.min(tx(p.0)), b.max(tx(p.0)))
        });
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 - x0 < 1e-9 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        let pad = (x1 - x0) * 0.05;
        let ymax = nice_max(pts().map(|p| p.1).fold(0.0, f64::max));
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, 20))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d((x0 - pad)..(x1 + pad), 0f64..ymax)
            .map_err(er)?;
        let log_x = self.log_x;
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&move |x: &f64| {
                let v = if log_x { 10f64.powf(*x) } else { *x };
                if v >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.3}")
                        .trim_end_matches('0')
                        .trim_end_matches('.')
                        .to_string()
                }
            })
            .draw()
            .map_err(er)?;
        for (j, (name, p)) in self.series.iter().enumerate() {
            let c = color(j);
            let p: Vec<(f64, f64)> = p.iter().map(|&(x, y)| (tx(x), y)).collect();
            chart
                .draw_series(LineSeries::new(p.clone(), c.stroke_width(2)))
                .map_err(er)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 15, y)], c.stroke_width(2))
                });
            if p.len() <= 20 {
                chart
                    .draw_series(p.iter().map(|&q| Circle::new(q, 3, c.filled())))
                    .map_err(er)?;
            }
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
    }
}

/// Points with error bars per category, and a reference line at 1.
#[derive(Debug, Clone)]
pub struct ErrorBars {
    pub title: String,
    pub y_label: String,
    pub categories: Vec<String>,
    /// (lo, point, hi) per category.
    pub points: Vec<(f64, f64, f64)>,
}

impl Chart for ErrorBars {
    fn size(&self) -> (u32, u32) {
        (width_for(self.categories.len(), 110), 520)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let n = self.categories.len();
        let ymax = nice_max(self.points.iter().map(|p| p.2).fold(1.0, f64::max));
        let mut chart = category_chart(root, &self.title, &self.y_label, &self.categories, ymax)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, 1.0), (n as f64, 1.0)],
                BLACK.mix(0.5),
            )))
            .map_err(er)?;
        let c = color(0);
        chart
            .draw_series(
                self.points
                    .iter()
                    .enumerate()
                    .flat_map(|(i, &(lo, _, hi))| {
                        let x = i as f64 + 0.5;
                        [
                            PathElement::new(vec![(x, lo), (x, hi)], c.stroke_width(2)),
                            PathElement::new(
                                vec![(x - 0.08, lo), (x + 0.08, lo)],
                                c.stroke_width(2),
                            ),
                            PathElement::new(
                                vec![(x - 0.08, hi), (x + 0.08, hi)],
                                c.stroke_width(2),
                            ),
                        ]
                    }),
            )
            .map_err(er)?;
        chart
            .draw_series(
                self.points
                    .iter()
                    .enumerate()
                    .map(|(i, &(_, p, _))| Circle::new((i as f64 + 0.5, p), 4, c.filled())),
            )
            .map_err(er)?;
        Ok(())
    }
}

/// Draws `labels[i]` centred under category `i` (x in `i..i+1`) of a chart whose x labels are
/// off; long labels get a smaller font.
fn category_labels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    labels: &[String],
) -> Result<(), String> {
    let n = labels.len().max(1) as f64;
    let (x0, _) = chart.backend_coord(&(0.0, 0.0));
    let (x1, _) = chart.backend_coord(&(n, 0.0));
    let slot = f64::from(x1 - x0) / n;
    for (i, l) in labels.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        let size = if (l.chars().count() as f64) * 7.5 > slot {
            10
        } else {
            13
        };
        let style = TextStyle::from((FONT, size).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new(l.clone(), (x, y + 6), style))
            .map_err(er)?;
    }
    Ok(())
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
            y_label: "exits/op".into(),
            categories: vec!["none".into(), "synthetic+all".into()],
            series: vec![
                ("p1".into(), vec![Some(2.0), Some(0.5)]),
                ("p2".into(), vec![None, Some(1.0)]),
            ],
        };
        let p = render(&bars, &dir, "bars", "exits").unwrap();
        assert!(p.svg.contains("<svg") && p.svg.contains("synthetic+all"));
        let png = std::fs::read(&p.png_path).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let lines = Lines {
            title: "cdf".into(),
            x_label: "ns".into(),
            y_label: "fraction".into(),
            log_x: true,
            series: vec![("a".into(), vec![(10.0, 0.1), (100.0, 0.5), (1000.0, 1.0)])],
        };
        render(&lines, &dir, "lines", "cdf").unwrap();
        let eb = ErrorBars {
            title: "speed-up".into(),
            y_label: "x".into(),
            categories: vec!["a".into()],
            points: vec![(0.9, 1.2, 1.5)],
        };
        render(&eb, &dir, "eb", "speed-up").unwrap();
        assert!(dir.join("eb.png").is_file() && dir.join("lines.svg").is_file());
    }
}
