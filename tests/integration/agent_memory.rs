//! The agent's memory is bounded by design: what it holds to name a large
//! binary's functions (the file's parsed symbol tables, the names found)
//! shows in `taskprof_symbol_cache_bytes` while the program runs, and goes
//! once the program has exited, rather than staying for the agent's life.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::agent_run::{start_on_pid, MetricsPage, RunningAgent};
use crate::common::receivers::Receiver;
use crate::common::{scratch_dir, ChildGuard};

/// Long enough for a loaded CI machine: windows are 2 s, and the agent
/// forgets an exited process after its last window.
const RISE_TIMEOUT: Duration = Duration::from_secs(90);
const FALL_TIMEOUT: Duration = Duration::from_secs(90);
/// What node's parsed symbol tables are estimated at, at least, in either
/// build of node (see [`busy_node`]).
const NODE_PARSED_AT_LEAST: f64 = 4.0 * 1024.0 * 1024.0;

/// node (`scripts/install-deps.sh --test` installs it). Its symbol and
/// string tables are large wherever they are: in the 99 MB static `node`
/// of NodeSource's node 20 (about 17 MB estimated), or in the
/// `libnode.so.108` that Debian 12's node 18 links (about 6.9 MB, from its
/// dynamic symbols only). The threshold below holds for both.
fn busy_node() -> ChildGuard {
    let child = Command::new("node")
        .args([
            "-e",
            "let s = 0; for (;;) { for (let i = 0; i < 1e6; i++) s += Math.sqrt(i); }",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|err| panic!("failed to start `node` ({err}): install it with scripts/install-deps.sh --test"));
    ChildGuard(child)
}

/// The symbol cache's bytes by part (`names`, `parsed`, `kernel`).
fn cache_part(page: &MetricsPage, part: &str) -> f64 {
    page.samples("taskprof_symbol_cache_bytes")
        .iter()
        .find(|(labels, _)| labels.contains(&format!("part=\"{part}\"")))
        .map(|(_, value)| *value)
        .unwrap_or(0.0)
}

/// Scrapes until `done` accepts a page; panics with the last page and the
/// log after `timeout`.
fn scrape_until(
    agent: &mut RunningAgent,
    what: &str,
    timeout: Duration,
    done: impl Fn(&MetricsPage) -> bool,
) -> MetricsPage {
    let deadline = Instant::now() + timeout;
    loop {
        let page = agent.scrape();
        if done(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last metrics:\n{}\nlog:\n{}",
            page.text,
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn symbol_cache_bytes_of_a_large_binary_fall_back_after_it_exits() {
    let mut node = busy_node();
    let receiver = Receiver::accepting();
    let spool = scratch_dir();
    // A bound above node's estimate, so that its parsed tables are kept
    // from window to window while it runs (the default bound, half of
    // 32 MiB, releases them after each window).
    let flags = [("--window", "2s"), ("--symbol-cache-memory", "256MiB")];
    let mut agent = start_on_pid("pyroscope", &receiver.url(), spool.path(), node.id(), &flags);

    let running = scrape_until(&mut agent, "node's symbol tables to be parsed", RISE_TIMEOUT, |page| {
        cache_part(page, "parsed") >= NODE_PARSED_AT_LEAST
    });
    let parsed = cache_part(&running, "parsed");
    let names = cache_part(&running, "names");
    assert!(running.value("taskprof_symbol_parsed_files") >= 1.0);
    assert!(names > 0.0, "names found: {}", running.text);
    // Bounded: the estimate of what is parsed never exceeds its half.
    assert!(parsed <= 128.0 * 1024.0 * 1024.0, "{parsed}");
    assert!(running.value("process_resident_memory_bytes") > 0.0);

    // node exits; the agent forgets it after its last window, closing its
    // file and dropping what it parsed and named there.
    node.kill().expect("kill node");
    node.wait().expect("reap node");
    let after = scrape_until(
        &mut agent,
        "node's parsed symbol tables to be released",
        FALL_TIMEOUT,
        |page| cache_part(page, "parsed") == 0.0,
    );
    assert_eq!(after.value("taskprof_symbol_parsed_files"), 0.0, "{}", after.text);
    // Names may still grow a little (the kernel's exit path, named in
    // node's last window, and with it the kernel's symbol table, its own
    // part); what node's file held must be gone.
    let before = parsed + names;
    let after_bytes = cache_part(&after, "parsed") + cache_part(&after, "names");
    assert!(
        after_bytes <= before - 0.9 * parsed,
        "taskprof_symbol_cache_bytes did not fall back: {before} while node ran ({parsed} parsed), \
         {after_bytes} after:\n{}",
        after.text
    );

    agent.terminate(Duration::from_secs(30)).assert_success();
}

#[test]
fn the_default_bound_keeps_parsed_symbol_tables_under_half_of_it() {
    let mut node = busy_node();
    let receiver = Receiver::accepting();
    let spool = scratch_dir();
    let mut agent = start_on_pid(
        "pyroscope",
        &receiver.url(),
        spool.path(),
        node.id(),
        &[("--window", "2s")],
    );
    // Names of node's functions are found (so its file was parsed), yet
    // after each window no more than 16 MiB of parsed tables stay: node's
    // alone are estimated above that.
    let deadline = Instant::now() + RISE_TIMEOUT;
    let mut windows = 0;
    while windows < 4 {
        assert!(Instant::now() < deadline, "too few windows:\n{}", agent.stderr());
        let closed = agent.wait_for_windows(windows + 1, RISE_TIMEOUT).len();
        let page = agent.scrape();
        let parsed = cache_part(&page, "parsed");
        assert!(
            parsed <= 16.0 * 1024.0 * 1024.0,
            "parsed tables over the default bound: {parsed}\n{}",
            page.text
        );
        windows = closed;
    }
    let page = agent.scrape();
    assert!(cache_part(&page, "names") > 0.0, "no names found:\n{}", page.text);
    node.kill().expect("kill node");
    agent.terminate(Duration::from_secs(30)).assert_success();
}
