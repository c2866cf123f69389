//! A tiny document model rendered to Markdown and to self-contained HTML.

use std::fmt::Write;

/// One block of a report.
#[derive(Debug, Clone)]
pub enum Block {
    Heading(u8, String),
    Para(String),
    List(Vec<String>),
    Table {
        head: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// A plot: its PNG (base64, embedded in HTML as a data URI, so the page stands alone and
    /// its text is drawn with the embedded font) and its files relative to the report.
    Plot {
        title: String,
        png_base64: String,
        svg_rel: String,
        png_rel: String,
    },
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Markdown.
pub fn markdown(title: &str, blocks: &[Block]) -> String {
    let mut out = format!("# {title}\n\n");
    for b in blocks {
        match b {
            Block::Heading(l, t) => {
                let _ = writeln!(out, "{} {t}\n", "#".repeat(usize::from(*l)));
            }
            Block::Para(t) => {
                let _ = writeln!(out, "{t}\n");
            }
            Block::List(items) => {
                for i in items {
                    let _ = writeln!(out, "- {i}");
                }
                out.push('\n');
            }
            Block::Table { head, rows } => {
                let line = |cells: &[String]| {
                    format!(
                        "| {} |\n",
                        cells
                            .iter()
                            .map(|c| md_cell(c))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    )
                };
                out.push_str(&line(head));
                out.push_str(&format!("|{}\n", "---|".repeat(head.len())));
                for r in rows {
                    out.push_str(&line(r));
                }
                out.push('\n');
            }
            Block::Plot {
                title,
                svg_rel,
                png_rel,
                ..
            } => {
                let _ = writeln!(out, "![{title}]({svg_rel}) ([PNG]({png_rel}))\n");
            }
        }
    }
    out
}

/// HTML escaping of text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Inline `code` spans of Markdown-ish text, escaped.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in esc(s).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(&part.replace("**", ""));
        }
    }
    out
}

/// A standalone HTML page: styles inline, plots as embedded PNG data, no external resources.
pub fn html(title: &str, blocks: &[Block]) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>\
body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}}\
table{{border-collapse:collapse;margin:1em 0;font-size:0.9em}}\
th,td{{border:1px solid #bbb;padding:0.25em 0.6em;text-align:right}}\
th{{background:#eee}}td:first-child,th:first-child{{text-align:left}}\
figure{{margin:1em 0}}figure img{{max-width:100%;height:auto}}code{{background:#f4f4f4}}</style></head><body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    );
    for b in blocks {
        match b {
            Block::Heading(l, t) => {
                let l = (*l).clamp(1, 6);
                let _ = writeln!(out, "<h{l}>{}</h{l}>", inline(t));
            }
            Block::Para(t) => {
                let _ = writeln!(out, "<p>{}</p>", inline(t));
            }
            Block::List(items) => {
                out.push_str("<ul>\n");
                for i in items {
                    let _ = writeln!(out, "<li>{}</li>", inline(i));
                }
                out.push_str("</ul>\n");
            }
            Block::Table { head, rows } => {
                out.push_str("<table>\n<tr>");
                for h in head {
                    let _ = write!(out, "<th>{}</th>", inline(h));
                }
                out.push_str("</tr>\n");
                for r in rows {
                    out.push_str("<tr>");
                    for c in r {
                        let _ = write!(out, "<td>{}</td>", inline(c));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</table>\n");
            }
            Block::Plot {
                title, png_base64, ..
            } => {
                let _ = writeln!(
                    out,
                    "<figure><img src=\"data:image/png;base64,{png_base64}\" alt=\"{t}\"><figcaption>{t}</figcaption></figure>",
                    t = esc(title)
                );
            }
        }
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_and_html_render_tables_and_escape() {
        let blocks = vec![
            Block::Heading(2, "w <1>".into()),
            Block::Table {
                head: vec!["a".into(), "b".into()],
                rows: vec![vec!["x|y".into(), "`z`".into()]],
            },
            Block::Plot {
                title: "t".into(),
                png_base64: "iVBORw0K".into(),
                svg_rel: "plots/t.svg".into(),
                png_rel: "plots/t.png".into(),
            },
        ];
        let md = markdown("T", &blocks);
        assert!(md.contains("| x\\|y | `z` |"));
        assert!(md.contains("![t](plots/t.svg)"));
        let h = html("T", &blocks);
        assert!(h.contains("<h2>w &lt;1&gt;</h2>"));
        assert!(h.contains("<td><code>z</code></td>"));
        assert!(h.contains("<figure><img src=\"data:image/png;base64,iVBORw0K\" alt=\"t\">"));
    }
}
