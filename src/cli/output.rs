//! Rendering: the JSON envelope, aligned tables, human sizes, colour on a TTY only.

use std::io::{IsTerminal, Write};

use serde_json::{json, Value};

/// Sizes as mlx-knife's JSON and the tables show them (the model object's file sizes use it).
pub use crate::store::summary::human_size;

/// Prints the mlx-knife envelope for a success.
pub fn print_success(command: &str, data: Value) {
    print_json(&json!({"status": "success", "command": command, "data": data, "error": null}));
}

/// Prints the envelope for an error; `extra` fields (e.g. `matches`) join `error`, and `data`
/// carries what was produced before the failure (or null).
pub fn print_error(command: &str, kind: &str, message: &str, extra: &Value, data: Value) {
    let mut error = json!({"type": kind, "message": message});
    if let (Some(e), Some(x)) = (error.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            e.insert(k.clone(), v.clone());
        }
    }
    print_json(&json!({"status": "error", "command": command, "data": data, "error": error}));
}

pub(super) fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = writeln!(out, "{text}");
}

/// A byte progress bar on stderr when it is a terminal, never with --json; `template` is
/// indicatif's (what follows the bar).
pub fn byte_bar(json: bool, template: &str) -> Option<indicatif::ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(&format!("{{bar:30}} {template}"))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

/// ANSI styling, enabled only when stdout is a terminal and NO_COLOR is unset.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub fn detect() -> Style {
        Style {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn paint(self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    pub fn green(self, s: &str) -> String {
        self.paint("32", s)
    }
    pub fn red(self, s: &str) -> String {
        self.paint("31", s)
    }
    pub fn yellow(self, s: &str) -> String {
        self.paint("33", s)
    }
    pub fn bold(self, s: &str) -> String {
        self.paint("1", s)
    }
    pub fn dim(self, s: &str) -> String {
        self.paint("2", s)
    }
}

/// Visible width, ignoring ANSI escapes.
fn visible_width(s: &str) -> usize {
    let mut width = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => width += 1,
        }
    }
    width
}

/// Renders rows under a header with every column padded to its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>], style: Style) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(visible_width(cell));
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - visible_width(cell) + 2));
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| style.bold(h)).collect(), &mut out);
    for row in rows {
        line(row.clone(), &mut out);
    }
    out
}

/// `2025-12-29T10:30:00Z` -> `2025-12-29 10:30`.
pub fn short_time(iso: Option<&str>) -> String {
    match iso {
        Some(t) if t.len() >= 16 => format!("{} {}", &t[..10], &t[11..16]),
        Some(t) => t.to_string(),
        None => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1500), "1.5 KB");
        assert_eq!(human_size(4_300_000_000), "4.3 GB");
    }

    #[test]
    fn tables_align_and_ignore_colour_codes() {
        let style = Style { color: true };
        let t = table(
            &["A", "B"],
            &[
                vec![style.red("xx"), "1".into()],
                vec!["y".into(), "2".into()],
            ],
            Style { color: false },
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A   B");
        assert_eq!(lines[1], "\x1b[31mxx\x1b[0m  1");
        assert_eq!(lines[2], "y   2");
    }
}
