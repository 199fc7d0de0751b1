//! The benchmark report: tables printed as aligned text, or as Markdown (`--markdown`) for
//! the README, with the machine and kernel they came from; and the statistics they use.

use std::{fmt::Write as _, fs, process::Command};

/// Median and quartiles of one series: statistics that one outlying round (another job
/// taking the CPU) does not move.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Spread { median: quantile(&v, 0.5), q1: quantile(&v, 0.25), q3: quantile(&v, 0.75), n: v.len() })
    }

    /// Half the interquartile range, in percent of the median.
    pub fn half_iqr_pct(&self) -> f64 {
        if self.median == 0.0 { 0.0 } else { 50.0 * (self.q3 - self.q1) / self.median.abs() }
    }

    /// `1.032 ±0.9% (IQR 1.021–1.040)`, with `decimals` places.
    pub fn show(&self, decimals: usize) -> String {
        format!("{:.d$} ±{:.1}% (IQR {:.d$}–{:.d$})", self.median, self.half_iqr_pct(), self.q1, self.q3, d = decimals)
    }
}

/// Linear interpolation between closest ranks (`sorted` is sorted and not empty).
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let pos = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// One table of the report.
pub struct Table {
    pub title: String,
    /// What the table measures, before it.
    pub intro: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Remarks after the table.
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, intro: impl Into<String>, headers: &[&str]) -> Table {
        Table {
            title: title.into(),
            intro: intro.into(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn text(&self, out: &mut String) {
        let _ = writeln!(out, "\n{}\n{}", self.title, "-".repeat(self.title.chars().count()));
        if !self.intro.is_empty() {
            let _ = writeln!(out, "{}", self.intro);
        }
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: &[String]| -> String {
            let padded: Vec<String> =
                cells.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
            padded.join("  ").trim_end().to_owned()
        };
        let _ = writeln!(out, "{}", line(&self.headers));
        let _ = writeln!(out, "{}", line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>()));
        for r in &self.rows {
            let _ = writeln!(out, "{}", line(r));
        }
        for n in &self.notes {
            let _ = writeln!(out, "* {n}");
        }
    }

    fn markdown(&self, out: &mut String) {
        let _ = writeln!(out, "\n### {}\n", self.title);
        if !self.intro.is_empty() {
            let _ = writeln!(out, "{}\n", self.intro);
        }
        let esc = |c: &String| c.replace('|', "\\|");
        let _ = writeln!(out, "| {} |", self.headers.iter().map(esc).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            self.headers.iter().enumerate().map(|(i, _)| if i == 0 { "---|" } else { "---:|" }).collect::<String>()
        );
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.iter().map(esc).collect::<Vec<_>>().join(" | "));
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
    }
}

/// Where the numbers came from.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub memory: String,
    pub load_before: String,
    pub load_after: String,
    pub date: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        let memory = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or_else(|| "unknown".to_owned(), |kb| format!("{:.0} GiB", kb as f64 / (1024.0 * 1024.0)));
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Machine { cpu, cores, kernel, memory, load_before: loadavg(), load_after: String::new(), date }
    }
}

/// The 1, 5 and 15 minute load averages.
/// The `q` quantile of `v` (nearest rank; 1.0 is the maximum).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    s.get(i).copied().unwrap_or(0.0)
}

/// A latency table's row: p50, p99 and max of `v` (milliseconds).
pub fn latency_row(what: &str, v: &[f64]) -> Option<Vec<String>> {
    let s = Spread::of(v)?;
    let ms = |x: f64| format!("{x:.1} ms");
    Some(vec![what.into(), ms(s.median), ms(percentile(v, 0.99)), ms(percentile(v, 1.0))])
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

pub struct Report {
    pub machine: Machine,
    /// How it was run (rounds, pinning, durations).
    pub settings: Vec<String>,
    pub tables: Vec<Table>,
    /// Remarks on the whole run (other fence agents seen, failures of a section).
    pub notes: Vec<String>,
}

impl Report {
    pub fn render(&self, markdown: bool) -> String {
        let m = &self.machine;
        let mut out = String::new();
        if markdown {
            let _ = writeln!(
                out,
                "Measured {} on {} ({} cores, {}), kernel {}; load average {} before, {} after.",
                m.date, m.cpu, m.cores, m.memory, m.kernel, m.load_before, m.load_after
            );
            if !self.settings.is_empty() {
                let _ = writeln!(out);
                for s in &self.settings {
                    let _ = writeln!(out, "- {s}");
                }
            }
            for n in &self.notes {
                let _ = writeln!(out, "\n**Note:** {n}");
            }
            for t in &self.tables {
                t.markdown(&mut out);
            }
        } else {
            let _ = writeln!(out, "\nfence benchmark, {}", m.date);
            let _ = writeln!(out, "machine: {}, {} cores, {}", m.cpu, m.cores, m.memory);
            let _ = writeln!(out, "kernel:  {}", m.kernel);
            let _ = writeln!(out, "load:    {} before, {} after", m.load_before, m.load_after);
            for s in &self.settings {
                let _ = writeln!(out, "{s}");
            }
            for n in &self.notes {
                let _ = writeln!(out, "NOTE: {n}");
            }
            for t in &self.tables {
                t.text(&mut out);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_interpolates_quartiles_and_ignores_an_outlier() {
        let s = Spread::of(&[5.0, 1.0, 3.0, 2.0, 4.0, 100.0]).unwrap();
        assert_eq!(s.median, 3.5);
        assert_eq!(s.q1, 2.25);
        assert_eq!(s.q3, 4.75);
        assert_eq!(s.n, 6);
        let one = Spread::of(&[2.0]).unwrap();
        assert_eq!((one.median, one.q1, one.q3, one.half_iqr_pct()), (2.0, 2.0, 2.0, 0.0));
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn markdown_tables_escape_pipes() {
        let mut t = Table::new("T", "", &["a", "b"]);
        t.row(vec!["x|y".into(), "1".into()]);
        let mut out = String::new();
        t.markdown(&mut out);
        assert!(out.contains("| x\\|y | 1 |"));
        assert!(out.contains("|---|---:|"));
    }
}
