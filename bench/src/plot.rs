//! An SVG of throughput against p99 latency, one point per measured produce workload,
//! coloured by system: down (lower latency) and to the right (more messages) is better. Written by hand (a few dozen elements),
//! so the plot needs no drawing library.

/// One measured workload.
#[derive(Debug, Clone)]
pub struct Point {
    pub system: String,
    pub label: String,
    pub msgs_per_s: f64,
    pub p99_us: f64,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 600.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// A log-scale axis from the decade below `lo` to the decade above `hi`.
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    fn around(values: impl Iterator<Item = f64>) -> Self {
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            (lo, hi) = (1.0, 10.0);
        }
        Self {
            lo: 10f64.powf(lo.log10().floor()),
            hi: 10f64
                .powf((hi.log10() + 1e-9).ceil())
                .max(10f64.powf(lo.log10().floor() + 1.0)),
        }
    }

    /// Where `v` falls, from 0 (lo) to 1 (hi).
    fn fraction(&self, v: f64) -> f64 {
        let v = v.clamp(self.lo, self.hi);
        (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
    }

    fn decades(&self) -> impl Iterator<Item = f64> + '_ {
        let (a, b) = (
            self.lo.log10().round() as i32,
            self.hi.log10().round() as i32,
        );
        (a..=b).map(|e| 10f64.powi(e))
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn si(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    }
}

/// The SVG document for `points`, titled `title` with `subtitle` (the machine) below it.
pub fn svg(title: &str, subtitle: &str, points: &[Point]) -> String {
    let x_axis = LogAxis::around(points.iter().map(|p| p.msgs_per_s));
    let y_axis = LogAxis::around(points.iter().map(|p| p.p99_us));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |v: f64| LEFT + x_axis.fraction(v) * plot_w;
    let y = |v: f64| TOP + (1.0 - y_axis.fraction(v)) * plot_h;
    let mut systems: Vec<&str> = Vec::new();
    for p in points {
        if !systems.contains(&p.system.as_str()) {
            systems.push(&p.system);
        }
    }
    let colour = |system: &str| {
        let i = systems.iter().position(|s| *s == system).unwrap_or(0);
        COLOURS[i % COLOURS.len()]
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"18\" font-size=\"15\">{}</text>\n\
         <text x=\"{LEFT}\" y=\"33\" font-size=\"11\" fill=\"#555\">{}</text>\n",
        escape(title),
        escape(subtitle)
    );
    for d in x_axis.decades() {
        s += &format!(
            "<line x1=\"{0:.1}\" y1=\"{TOP}\" x2=\"{0:.1}\" y2=\"{1:.1}\" stroke=\"#ddd\"/>\n<text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\">{3}</text>\n",
            x(d),
            TOP + plot_h,
            TOP + plot_h + 18.0,
            si(d)
        );
    }
    for d in y_axis.decades() {
        s += &format!(
            "<line x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\n<text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\">{4} µs</text>\n",
            y(d),
            LEFT + plot_w,
            LEFT - 6.0,
            y(d) + 4.0,
            si(d)
        );
    }
    s += &format!(
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#333\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">acknowledged messages per second (log)</text>\n\
         <text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">p99 produce→ack latency (log)</text>\n",
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for p in points {
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"{}\"><title>{}: {} ({:.0} msg/s, p99 {:.0} µs)</title></circle>\n",
            x(p.msgs_per_s),
            y(p.p99_us),
            colour(&p.system),
            escape(&p.system),
            escape(&p.label),
            p.msgs_per_s,
            p.p99_us
        );
    }
    for (i, system) in systems.iter().enumerate() {
        let ly = TOP + 10.0 + i as f64 * 20.0;
        s += &format!(
            "<circle cx=\"{0:.1}\" cy=\"{1:.1}\" r=\"5\" fill=\"{2}\"/><text x=\"{3:.1}\" y=\"{4:.1}\">{5}</text>\n",
            WIDTH - RIGHT + 20.0,
            ly,
            colour(system),
            WIDTH - RIGHT + 32.0,
            ly + 4.0,
            escape(system)
        );
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(system: &str, msgs_per_s: f64, p99_us: f64) -> Point {
        Point {
            system: system.into(),
            label: "w".into(),
            msgs_per_s,
            p99_us,
        }
    }

    #[test]
    fn faster_is_further_right_and_lower_latency_is_lower_down() {
        let doc = svg(
            "t",
            "machine",
            &[
                point("Keel", 1e6, 1_000.0),
                point("Peer <q>", 1e4, 50_000.0),
            ],
        );
        let circles: Vec<(f64, f64)> = doc
            .lines()
            .filter(|l| l.starts_with("<circle cx=") && l.contains("<title>"))
            .filter_map(|l| {
                let num = |key: &str| -> Option<f64> {
                    let rest = &l[l.find(key)? + key.len()..];
                    rest[..rest.find('"')?].parse().ok()
                };
                Some((num("cx=\"")?, num("cy=\"")?))
            })
            .collect();
        assert_eq!(circles.len(), 2, "{doc}");
        assert!(circles[0].0 > circles[1].0, "Keel is right of the peer");
        assert!(circles[0].1 > circles[1].1, "Keel is below the peer");
        assert!(doc.contains("Peer &lt;q&gt;"), "names are escaped");
        assert!(!doc.contains("<q>"));
        assert_eq!(doc.matches("<svg").count(), 1);
        assert!(doc.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn axes_span_whole_decades_around_the_data() {
        let a = LogAxis::around([3_000.0, 250_000.0].into_iter());
        assert_eq!((a.lo, a.hi), (1_000.0, 1_000_000.0));
        assert_eq!(a.fraction(1_000.0), 0.0);
        assert_eq!(a.fraction(1_000_000.0), 1.0);
        let single = LogAxis::around([100.0].into_iter());
        assert!(single.hi > single.lo);
        let empty = LogAxis::around(std::iter::empty());
        assert!(empty.hi > empty.lo);
    }
}
