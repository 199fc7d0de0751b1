//! The denial storm in the bench: the highest rate of denials whose events all reach the event
//! file, found by doubling, the share lost at twice that rate, and what each line costs the
//! agent in CPU time (which says how far one core of the agent goes when the load generators,
//! sharing the machine, cannot reach its limit).

use std::{net::TcpListener, path::Path, thread, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench::Env,
    host::{Agent, Cgroup, helper},
    report::Table,
    util::step,
};

/// Denial storm: the highest rate of denials whose events all reach the event file (no rate
/// limit, nothing dropped), found by doubling, and the share lost at twice that rate.
pub fn storm(env: &Env<'_>) -> Result<Table> {
    const SECONDS: f64 = 2.0;
    step("denial storm: events per second written to the file with zero drops (rate limit off)");
    let art = env.art;
    let mut t = Table::new(
        "Denial storm",
        format!(
            "Fenced processes make denied connects at a paced rate for {SECONDS} s, doubling from 5,000/s, with the \
             event rate limit off; lines counted in the event file. The generators share the machine with the agent."
        ),
        &["asked", "achieved", "denied", "written to the file", "lost", "agent CPU per line"],
    );
    let cg = Cgroup::create("/fence-bench/storm")?;
    let denied = TcpListener::bind("127.0.0.1:0")?;
    let to = denied.local_addr()?.to_string();
    let policy = format!(
        "schema: 1\nidentities:\n  - name: storm\n    owner: xtask\n    purpose: benchmark\n    selectors: [{{cgroup: \"{}\"}}]\n    egress: []\n",
        cg.rel
    );
    let dir = env.work.join("storm-agent");
    let agent =
        Agent::start(&art.agent, &dir, &policy, false, "rate_limit = 0\nmax_bytes = 0\nsummary_interval = 1\n")?;
    // One step: `rate` denials per second for SECONDS.
    let step_at = |rate: u64| -> Result<Step> {
        std::fs::write(&agent.events, "")?;
        let cpu_before = cpu_seconds(agent.pid())?;
        // One generator process tops out near 100k connects/s here; above 50k/s, two share it.
        let generators: u64 = if rate > 50_000 { 2 } else { 1 };
        let reports: Vec<Result<serde_json::Value>> = thread::scope(|s| {
            let handles: Vec<_> = (0..generators)
                .map(|_| {
                    s.spawn(|| {
                        let per = (rate / generators).to_string();
                        helper(&art.tests, Some(&cg), &["connect-paced", &to, &per, &SECONDS.to_string()])
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("generator panicked"))).collect()
        });
        let (mut attempts, mut achieved) = (0, 0.0);
        for r in reports {
            let v = r?;
            attempts += v["denied"].as_u64().context("denied")?;
            achieved += v["rate"].as_f64().unwrap_or(0.0);
        }
        // Let the writer finish (it stops growing), then count.
        let mut last = (u64::MAX, 0);
        loop {
            thread::sleep(Duration::from_millis(1500));
            let n = connect_lines(&agent.events)?;
            if n == last {
                break;
            }
            last = n;
        }
        let cpu = cpu_seconds(agent.pid())? - cpu_before;
        Ok(Step { achieved, attempts, written: last.0, counted: last.1, cpu })
    };
    let pct = |lost: u64, of: u64| format!("{:.1}%", 100.0 * lost as f64 / of.max(1) as f64);
    let mut rate = 5_000u64;
    let mut best: Option<Step> = None;
    let mut limited_by_generator = false;
    // The step that lost events (the doubling after the best: twice the best rate asked).
    let mut overload = None;
    let row = |t: &mut Table, asked: u64, r: &Step| {
        t.row(vec![
            format!("{asked}/s"),
            format!("{:.0}/s", r.achieved),
            r.attempts.to_string(),
            r.written.to_string(),
            pct(r.attempts.saturating_sub(r.written), r.attempts),
            r.per_line().map_or("–".to_owned(), |s| format!("{:.1} µs", s * 1e6)),
        ]);
    };
    for _ in 0..8 {
        let result = step_at(rate)?;
        let Step { achieved, attempts, written, .. } = result;
        eprintln!("    {rate}/s asked, {achieved:.0}/s achieved: {attempts} denied, {written} written");
        row(&mut t, rate, &result);
        if written < attempts {
            overload = Some(result);
            break;
        }
        best = Some(result);
        if achieved < rate as f64 * 0.9 {
            limited_by_generator = true;
            break;
        }
        rate *= 2;
    }
    let Some(best) = best else {
        t.notes.push(format!("Events were dropped even at {rate}/s."));
        return Ok(t);
    };
    t.notes.push(format!(
        "**{:.0} events/s written to the file with zero drops**{}.",
        best.achieved,
        if limited_by_generator { " (the load generator's limit on this machine, not the agent's)" } else { "" }
    ));
    if let Some(per_line) = best.per_line() {
        t.notes.push(format!(
            "At that rate the agent (every thread: reading the ring buffer, building and encoding each record, \
             writing) used {:.1} µs of CPU per line: one core of the agent keeps up with about {:.0} lines/s.",
            per_line * 1e6,
            1.0 / per_line
        ));
    }
    if !limited_by_generator {
        let r = match overload {
            Some(r) => r,
            None => {
                let twice = (best.achieved * 2.0) as u64;
                let r = step_at(twice)?;
                row(&mut t, twice, &r);
                r
            }
        };
        let lost = r.attempts.saturating_sub(r.written);
        t.notes.push(format!(
            "Asked for twice that ({:.0}/s achieved), {} of events were dropped ({lost} of {}); the \
             `events-dropped` summaries count {}.",
            r.achieved,
            pct(lost, r.attempts),
            r.attempts,
            r.counted
        ));
    }
    drop(denied);
    Ok(t)
}

/// One step of the storm.
#[derive(Debug, Clone, Copy)]
struct Step {
    achieved: f64,
    attempts: u64,
    written: u64,
    /// Events the `events-dropped` summaries count.
    counted: u64,
    /// The agent's CPU time over the step (user + system, every thread), in seconds.
    cpu: f64,
}

impl Step {
    /// The agent's CPU seconds per line written.
    fn per_line(&self) -> Option<f64> {
        (self.written > 0 && self.cpu > 0.0).then(|| self.cpu / self.written as f64)
    }
}

/// User + system CPU time of process `pid` so far (every thread), from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("/proc/PID/stat without a command")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok()).context("utime/stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(14)? + ticks(15)?) as f64 / hz)
}

/// Enforcement lines in the event file, and the events its `events-dropped` summaries count.
fn connect_lines(path: &Path) -> Result<(u64, u64)> {
    use std::io::BufRead as _;
    let f = std::fs::File::open(path)?;
    let (mut n, mut dropped) = (0, 0);
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        if line.contains("\"action\":\"connect\"") {
            n += 1;
        } else if line.contains("\"action\":\"events-dropped\"")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
        {
            dropped += v["fence"]["dropped"]["count"].as_u64().unwrap_or(0);
        }
    }
    Ok((n, dropped))
}
