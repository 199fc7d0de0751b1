//! A small test runner. Each test runs in its own process (`fence-tests run NAME`), one at a
//! time, so that a crash, a hang or a leaked attachment in one test cannot affect the next.
//! Results are single lines that `cargo xtask test` reads from a pipe (host tier) or from the
//! guest's serial console (vm tier):
//!
//! `FENCE-RESULT<TAB>name<TAB>PASS|FAIL|SKIP<TAB>detail`
//!
//! A test fails by panicking (assertions), and is skipped only through [`skip`], which says
//! why. A skipped test is never counted as passed.

use std::{
    any::Any,
    io::Read as _,
    panic::{self, AssertUnwindSafe},
    process::{Command, ExitCode, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct Test {
    pub name: &'static str,
    pub run: fn(),
}

/// Ends the current test as skipped, with the reason.
pub fn skip(reason: impl Into<String>) -> ! {
    panic::panic_any(Skip(reason.into()))
}

struct Skip(String);

pub const RESULT_TAG: &str = "FENCE-RESULT";
pub const SUMMARY_TAG: &str = "FENCE-SUMMARY";
/// A test process's line saying where its time went (agents started and stopped).
const TIMING_TAG: &str = "FENCE-TIMING";
const EXIT_SKIP: u8 = 77;

static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);
static NOTE: Mutex<String> = Mutex::new(String::new());

/// A finding to report on the test's result line when it passes (a measurement, say).
pub fn note(text: impl AsRef<str>) {
    let mut n = NOTE.lock().unwrap_or_else(|p| p.into_inner());
    if !n.is_empty() {
        n.push_str("; ");
    }
    n.push_str(&text.as_ref().replace(['\t', '\n'], " "));
}

fn message_of(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "test panicked".to_owned()
    }
}

/// Runs one test in this process.
pub fn run_one(tests: &[Test], name: &str) -> ExitCode {
    let Some(test) = tests.iter().find(|t| t.name == name) else {
        eprintln!("no test named {name}");
        return ExitCode::from(2);
    };
    // Keep the assertion message and location for the result line; skips are quiet.
    panic::set_hook(Box::new(|info| {
        if info.payload().downcast_ref::<Skip>().is_some() {
            return;
        }
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let msg = format!("{}{location}", message_of(info.payload()));
        eprintln!("panic: {msg}");
        *PANIC_MESSAGE.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
    }));
    let outcome = panic::catch_unwind(AssertUnwindSafe(test.run));
    if let Some(t) = crate::agent::timing() {
        println!("{TIMING_TAG}\t{t}");
    }
    match outcome {
        Ok(()) => {
            println!("{RESULT_TAG}\t{name}\tPASS\t{}", NOTE.lock().unwrap_or_else(|p| p.into_inner()));
            ExitCode::SUCCESS
        }
        Err(payload) => {
            if let Some(Skip(reason)) = payload.downcast_ref::<Skip>() {
                println!("{RESULT_TAG}\t{name}\tSKIP\t{reason}");
                return ExitCode::from(EXIT_SKIP);
            }
            let msg = PANIC_MESSAGE
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_else(|| message_of(payload.as_ref()));
            println!("{RESULT_TAG}\t{name}\tFAIL\t{}", msg.replace(['\n', '\t'], " "));
            ExitCode::FAILURE
        }
    }
}

/// Runs every test (or those whose name contains `filter`, or any of its comma-separated
/// parts), each in a child process with a time limit, and prints one result line per test and
/// a summary line.
pub fn run_all(tests: &[Test], filter: Option<&str>, per_test: Duration, kernel_log_on_failure: bool) -> ExitCode {
    let exe = std::env::current_exe().expect("current_exe");
    let doctor_cache = std::env::temp_dir().join(format!("fence-tests-doctor.{}.json", std::process::id()));
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for test in tests.iter().filter(|t| filter.is_none_or(|f| f.split(',').any(|part| t.name.contains(part)))) {
        let started = Instant::now();
        eprintln!("--- {} ...", test.name);
        let mut child = Command::new(&exe)
            .args(["run", test.name])
            .env(crate::env::DOCTOR_CACHE, &doctor_cache)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning a test process");
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let timed_out = loop {
            match child.try_wait() {
                Ok(Some(_)) => break false,
                Ok(None) if started.elapsed() > per_test => {
                    // Our own child, by pid.
                    let _ = child.kill();
                    let _ = child.wait();
                    break true;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for test {}: {e}", test.name),
            }
        };
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        let line = stdout.lines().find(|l| l.starts_with(RESULT_TAG)).map(str::to_owned);
        let line = match (timed_out, line) {
            (true, _) => format!("{RESULT_TAG}\t{}\tFAIL\ttimed out after {per_test:?}", test.name),
            (false, Some(l)) => l,
            (false, None) => format!("{RESULT_TAG}\t{}\tFAIL\tthe test process died without a result", test.name),
        };
        let verdict = line.split('\t').nth(2).unwrap_or("FAIL");
        match verdict {
            "PASS" => passed += 1,
            "SKIP" => skipped += 1,
            _ => failed += 1,
        }
        if verdict != "PASS" && verdict != "SKIP" {
            // Indented, so that the child's own result line is not read twice.
            eprintln!("----- output of {} -----", test.name);
            for l in stdout.lines().chain(stderr.lines()) {
                eprintln!("| {l}");
            }
            if kernel_log_on_failure {
                eprintln!("----- kernel log (tail) -----");
                eprintln!("{}", crate::env::kernel_log_tail(60));
            }
            eprintln!("-----");
        }
        println!("{line}");
        let timing = stdout.lines().find_map(|l| l.strip_prefix(TIMING_TAG)).map(|t| format!(" ({})", t.trim()));
        eprintln!("    {} in {:.1}s{}", verdict, started.elapsed().as_secs_f64(), timing.unwrap_or_default());
    }
    let _ = std::fs::remove_file(&doctor_cache);
    println!("{SUMMARY_TAG}\tpassed={passed}\tfailed={failed}\tskipped={skipped}");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
