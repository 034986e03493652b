//! HTML building blocks of the console: escaping, the page frame, number
//! formatting, form/query decoding and small inline-SVG line charts.

use std::collections::HashMap;
use std::fmt::Write;

/// Text or attribute value, escaped for HTML (`&<>"'`).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Everything but RFC 3986's unreserved characters is escaped.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A query-string component (for links we build).
pub fn q(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

/// `application/x-www-form-urlencoded` (query strings and form bodies).
pub fn parse_form(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |x: &str| {
            let x = x.replace('+', " ");
            percent_encoding::percent_decode_str(&x)
                .decode_utf8_lossy()
                .into_owned()
        };
        out.entry(dec(k)).or_insert_with(|| dec(v));
    }
    out
}

/// Bytes in binary units with three significant figures, e.g. `50.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else if v >= 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Digits grouped by thin spaces (exact byte counts).
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('\u{2009}');
        }
        out.push(c);
    }
    out
}

/// UTC time of a Unix millisecond timestamp, `2026-12-03 17:40:05Z`.
pub fn time_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub struct Nav {
    pub user: String,
    pub admin: bool,
    pub csrf: String,
}

const PAGES: [(&str, &str); 4] = [
    ("images", "Images"),
    ("repository", "Repository"),
    ("transfers", "Transfers"),
    ("health", "Health"),
];

/// A whole page: header with navigation and sign-out (when signed in), then
/// `main`.
pub fn page(title: &str, current: &str, nav: Option<&Nav>, main: &str) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · strato</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/ui/assets/console.css\">\
         <script src=\"/ui/assets/console.js\" defer></script></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a><header><span class=\"brand\">strato</span>",
        esc(title)
    );
    if let Some(n) = nav {
        h.push_str("<nav aria-label=\"Console\"><ul>");
        for (path, label) in PAGES {
            let cur = if path == current {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(h, "<li><a href=\"/ui/{path}\"{cur}>{label}</a></li>");
        }
        let _ = write!(
            h,
            "</ul></nav><form class=\"signout\" method=\"post\" action=\"/ui/signout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <span class=\"who\">{}{}</span> <button type=\"submit\">Sign out</button></form>",
            esc(&n.csrf),
            esc(&n.user),
            if n.admin { " (admin)" } else { "" }
        );
    }
    let _ = write!(
        h,
        "</header><main id=\"main\" tabindex=\"-1\"><h1>{}</h1>{main}</main></body></html>",
        esc(title)
    );
    h
}

/// One series of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    /// CSS class of the line (colour in console.css).
    pub class: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A small line chart as inline SVG, scaled to the data, with the y range
/// and x range written as text so it reads without a mouse.
pub fn line_chart(title: &str, unit: &dyn Fn(f64) -> String, series: &[Series<'_>]) -> String {
    const W: f64 = 480.0;
    const H: f64 = 140.0;
    const PAD_L: f64 = 70.0;
    const PAD_B: f64 = 20.0;
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<figure class=\"chart\"><svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{PAD_L}\" y1=\"{b}\" x2=\"{W}\" y2=\"{b}\"/>\
         <line class=\"axis\" x1=\"{PAD_L}\" y1=\"0\" x2=\"{PAD_L}\" y2=\"{b}\"/>",
        b = H - PAD_B
    );
    if x0 > x1 {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\">no samples yet</text>",
            PAD_L + 10.0,
            H / 2.0
        );
    } else {
        let y1 = if y1 <= 0.0 { 1.0 } else { y1 };
        let span = if x1 > x0 { x1 - x0 } else { 1.0 };
        let _ = write!(
            svg,
            "<text class=\"tick\" x=\"{}\" y=\"12\" text-anchor=\"end\">{}</text>\
             <text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>",
            PAD_L - 4.0,
            esc(&unit(y1)),
            PAD_L - 4.0,
            H - PAD_B
        );
        for s in series {
            let mut pts = String::new();
            for &(x, y) in &s.points {
                let px = PAD_L + (x - x0) / span * (W - PAD_L - 4.0);
                let py = (H - PAD_B) - y / y1 * (H - PAD_B - 6.0);
                let _ = write!(pts, "{px:.1},{py:.1} ");
            }
            let _ = write!(
                svg,
                "<polyline class=\"{}\" fill=\"none\" points=\"{}\"/>",
                esc(s.class),
                pts.trim_end()
            );
            if let Some(&(px, py)) = s.points.last() {
                let cx = PAD_L + (px - x0) / span * (W - PAD_L - 4.0);
                let cy = (H - PAD_B) - py / y1 * (H - PAD_B - 6.0);
                let _ = write!(
                    svg,
                    "<circle class=\"{}\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"2.5\"/>",
                    esc(s.class)
                );
            }
        }
    }
    svg.push_str("</svg><figcaption>");
    let _ = write!(svg, "<strong>{}</strong>", esc(title));
    for s in series {
        let last = s.points.last().map_or_else(|| "–".into(), |p| unit(p.1));
        let _ = write!(
            svg,
            " <span class=\"key {}\">{}: <span class=\"num\">{}</span></span>",
            esc(s.class),
            esc(s.name),
            esc(&last)
        );
    }
    svg.push_str("</figcaption></figure>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>\"a\"&'b'</script>"),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn forms_decode() {
        let f = parse_form("a=1&b=x+y%21&c=&a=2&%3Ckey%3E=v");
        assert_eq!(f["a"], "1");
        assert_eq!(f["b"], "x y!");
        assert_eq!(f["c"], "");
        assert_eq!(f["<key>"], "v");
    }

    #[test]
    fn numbers_and_times() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(50 << 20), "50.0 MiB");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(grouped(52_428_800), "52\u{2009}428\u{2009}800");
        assert_eq!(time_ms(0), "1970-01-01 00:00:00Z");
        assert_eq!(time_ms(1_796_320_805_000), "2026-12-03 18:00:05Z");
    }

    #[test]
    fn chart_renders_points_and_empty() {
        let s = [Series {
            name: "stored",
            class: "s1",
            points: vec![(0.0, 1.0), (1.0, 2.0)],
        }];
        let svg = line_chart("t<", &|v| format!("{v}"), &s);
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("t&lt;"));
        let empty = line_chart("e", &|v| format!("{v}"), &[]);
        assert!(empty.contains("no samples yet"));
    }
}
