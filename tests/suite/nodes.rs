//! Several nodes through burn-collective's orchestrator, as separate processes on 127.0.0.1:
//! two processes of one peer each compute what two peers in one process compute; a node that dies
//! stops the other within `distributed.timeout_s` (plus a margin for its step and exit) with an
//! error naming the peer; and the run then resumes from its last checkpoint and ends as the
//! uninterrupted run does.

use crate::common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{workdir, RunConfig};

const TIMEOUT_S: u64 = 8;

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when the test ends, whatever happens.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn orchestrator(port: u16) -> Proc {
    Proc(common::qformer("orchestrator").args(["--port", &port.to_string()]).command().stderr(Stdio::null()).spawn().unwrap())
}

/// A training process whose stderr goes to `log` (a file: a pipe nobody reads could fill).
fn train(cfg: &Path, sets: &[String], resume: bool, log: &Path) -> Command {
    let resume: &[&str] = if resume { &["--resume", "latest"] } else { &[] };
    common::qformer("train").config(cfg).sets(sets).args(resume).log_to(log).command()
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// `--set` lines of node `node` of two, meeting at the orchestrator on `port`.
fn node_sets(node: usize, orchestrator: u16, data: u16) -> Vec<String> {
    vec![
        "distributed.nodes=2".into(),
        format!("distributed.node={node}"),
        format!("distributed.orchestrator=\"ws://127.0.0.1:{orchestrator}\""),
        format!("distributed.address=\"ws://127.0.0.1:{data}\""),
        format!("distributed.timeout_s={TIMEOUT_S}"),
    ]
}

/// Runs both nodes to the end.
fn two_nodes(cfg: &Path, resume: bool) {
    let port = free_port();
    let _orch = orchestrator(port);
    let log = |n: usize| cfg.with_extension(format!("node{n}.log"));
    let children: Vec<Child> = (0..2).map(|n| train(cfg, &node_sets(n, port, free_port()), resume, &log(n)).spawn().unwrap()).collect();
    for (n, mut child) in children.into_iter().enumerate() {
        let status = child.wait().unwrap();
        let output = read(&log(n));
        assert!(status.success(), "node {n} failed:\n{output}");
        // Library logging is filtered to warnings, and nothing is coloured in a file.
        assert!(!output.contains(" INFO ") && !output.contains('\x1b'), "node {n}:\n{output}");
    }
    let node1 = read(&log(1));
    assert!(
        !node1.contains("; run folder ") && node1.contains("node 0 writes the run folder"),
        "node 1 names no folder of its own:\n{node1}"
    );
}

fn records(run: &Path) -> Vec<String> {
    common::records(run, &[])
}

fn local_reference(dir: &Path, steps: u64) -> PathBuf {
    let cfg = RunConfig::miniature(steps).write(dir, "local");
    let log = dir.join("local.log");
    let status = train(&cfg, &["distributed.peers=2".into()], false, &log).status().unwrap();
    assert!(status.success(), "{}", read(&log));
    dir.join("checkpoints/local")
}

#[test]
fn two_processes_reproduce_two_local_peers() {
    let dir = workdir("nodes-equal");
    let reference = local_reference(&dir, 6);
    let cfg = RunConfig::miniature(6).write(&dir, "nodes");
    two_nodes(&cfg, false);
    let (a, b) = (records(&reference), records(&dir.join("checkpoints/nodes")));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b);
}

#[test]
fn a_dead_node_stops_the_other_and_the_run_resumes() {
    const STEPS: u64 = 60;
    let dir = workdir("nodes-kill");
    let reference = local_reference(&dir, STEPS);
    let cfg = RunConfig::miniature(STEPS).write(&dir, "nodes");
    let run = dir.join("checkpoints/nodes");
    let port = free_port();
    let orch = orchestrator(port);
    let log = |n: usize| dir.join(format!("killed-node{n}.log"));
    let mut nodes: Vec<Proc> =
        (0..2).map(|n| Proc(train(&cfg, &node_sets(n, port, free_port()), false, &log(n)).spawn().unwrap())).collect();
    // Node 1 dies once a few checkpoints exist.
    let started = Instant::now();
    while qformer::train::checkpoint::resolve(&run).map_or(0, |d| step_of(&d)) < 4 {
        assert!(started.elapsed() < Duration::from_secs(120), "the nodes made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    nodes[1].0.kill().unwrap();
    let killed = Instant::now();
    let status = wait_with_deadline(&mut nodes[0], Duration::from_secs(TIMEOUT_S + 30));
    let waited = killed.elapsed();
    let stderr = read(&log(0));
    assert!(!status.success(), "node 0 finished although node 1 died:\n{stderr}");
    assert!(stderr.contains("peer 0 (node 0 at ws://127.0.0.1:"), "the error names the waiting peer and its node:\n{stderr}");
    assert!(waited < Duration::from_secs(TIMEOUT_S + 20), "node 0 took {waited:?} to stop");
    drop(orch);
    // The last checkpoint is intact: both nodes resume from it (a fresh orchestrator) and finish.
    two_nodes(&cfg, true);
    assert_eq!(records(&reference), records(&run));
}

/// The step of a checkpoint folder (0 while it cannot be read: rotated away meanwhile).
fn step_of(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("state.json")).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|s| s["step"].as_u64()).unwrap_or(0)
}

/// The exit status once the process ends; a failure when it outlives `deadline`.
fn wait_with_deadline(p: &mut Proc, deadline: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = p.0.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < deadline, "node 0 still runs {deadline:?} after node 1 died");
        std::thread::sleep(Duration::from_millis(50));
    }
}
