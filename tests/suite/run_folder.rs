//! A run folder belongs to one run: a second training into it is refused while the first holds
//! it, a fresh training into a finished run is refused unless `--overwrite`, and a refused resume
//! changes nothing in the folder.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{workdir, RunConfig};

fn qformer(cfg: &Path, args: &[&str]) -> Command {
    common::qformer("train").config(cfg).run_name("run").args(args).command()
}

fn run(cfg: &Path, args: &[&str]) -> Output {
    qformer(cfg, args).output().unwrap()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn a_second_training_into_a_held_folder_is_refused_and_the_first_is_intact() {
    let dir = workdir("concurrent");
    let cfg = RunConfig::miniature(80).write(&dir, "run");
    let run_dir = dir.join("checkpoints/run");
    let mut first = qformer(&cfg, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while !run_dir.join(".lock").exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "the first run never took its lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = run(&cfg, &["--overwrite"]);
    let first_status = first.wait().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second run must be refused");
    assert!(err.contains("in use by process") && err.contains(&first.id().to_string()), "{err}");
    assert!(first_status.success());
    let steps: Vec<u64> = qformer::train::metrics::MetricsLog::read(&run_dir).unwrap().iter().map(|m| m.step).collect();
    assert_eq!(steps, (1..=80).collect::<Vec<_>>(), "the first run's log is its own, in order");
    assert!(!run_dir.join(".lock").exists(), "the lock is released at the end");
}

#[test]
fn a_fresh_training_into_a_run_is_refused_unless_overwrite() {
    let dir = workdir("fresh");
    let cfg = RunConfig::miniature(3).write(&dir, "run");
    let run_dir = dir.join("checkpoints/run");
    assert!(run(&cfg, &[]).status.success());
    let before = snapshot(&run_dir);
    let out = run(&cfg, &["--set", "train.steps=2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--resume latest") && err.contains("--overwrite"), "{err}");
    assert_eq!(snapshot(&run_dir), before, "a refused run writes nothing");
    assert!(run(&cfg, &["--set", "train.steps=2", "--overwrite"]).status.success());
    let steps: Vec<u64> = qformer::train::metrics::MetricsLog::read(&run_dir).unwrap().iter().map(|m| m.step).collect();
    assert_eq!(steps, [1, 2]);
    assert!(!run_dir.join("step-00000003").exists(), "the replaced run's checkpoints are gone");
}

/// `--overwrite` removes the previous run only once the new start has passed every check: a
/// start that fails on a missing held-out file or on starting weights of another shape leaves
/// the previous run byte for byte.
#[test]
fn a_failed_overwrite_start_keeps_the_previous_run() {
    let dir = workdir("overwrite-fails");
    let cfg = RunConfig::miniature(2).write(&dir, "run");
    let run_dir = dir.join("checkpoints/run");
    assert!(run(&cfg, &[]).status.success());
    let before = snapshot(&run_dir);
    let step = qformer::train::checkpoint::resolve(&run_dir).unwrap();
    let weights = format!("init.weights=\"{}\"", step.join("model.safetensors").display());
    for (sets, named) in [
        (vec!["data.eval=\"/missing/eval.json\"".to_string()], "eval.json"),
        (vec![weights, "model.num_query_tokens=6".into()], "query_tokens"),
    ] {
        let out = common::qformer("train").config(&cfg).run_name("run").arg("--overwrite").sets(&sets).output();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(named), "{sets:?}: {err}");
        assert!(!err.contains("removed the previous run"), "{err}");
        assert_eq!(snapshot(&run_dir), before, "{sets:?}: the previous run must survive a failed start");
    }
}

#[test]
fn a_refused_resume_leaves_every_file_byte_identical() {
    let dir = workdir("refused");
    let cfg = RunConfig::miniature(2).write(&dir, "run");
    let run_dir = dir.join("checkpoints/run");
    assert!(run(&cfg, &[]).status.success());
    let before = snapshot(&run_dir);
    let out = run(&cfg, &["--resume", "latest", "--set", "optim.lr=0.5", "--set", "train.steps=4"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("optim.lr"), "{err}");
    assert_eq!(snapshot(&run_dir), before);
}

#[test]
fn sigterm_checkpoints_the_step_reached_and_the_resumed_run_is_bit_identical() {
    let dir = workdir("sigterm");
    let steps = 60;
    let cfg = RunConfig { checkpoint_every: 25, ..RunConfig::miniature(steps) }.write(&dir, "run");
    let reference = dir.join("checkpoints/reference");
    assert!(qformer(&cfg, &["--set", "train.run_name=\"reference\""]).status().unwrap().success());

    let run_dir = dir.join("checkpoints/run");
    let child = qformer(&cfg, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    let logged = || std::fs::read_to_string(run_dir.join("metrics.jsonl")).map_or(0, |t| t.lines().count());
    while logged() < 3 {
        assert!(started.elapsed() < Duration::from_secs(120), "the run made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let reached = qformer::train::metrics::MetricsLog::read(&run_dir).unwrap().len() as u64;
    assert!(reached < steps, "the run stopped before its end ({reached})");
    assert!(err.contains(&format!("stopped at step {reached}; resume with --resume latest")), "{err}");
    let latest = qformer::train::checkpoint::resolve(&run_dir).unwrap();
    assert!(latest.ends_with(format!("step-{reached:08}")), "{}", latest.display());

    assert!(run(&cfg, &["--resume", "latest"]).status.success());
    let last = |r: &Path| qformer::train::checkpoint::resolve(r).unwrap();
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert!(common::tensors(&last(&reference).join(file)) == common::tensors(&last(&run_dir).join(file)), "{file} differs");
    }
    let losses = |r: &Path| qformer::train::metrics::MetricsLog::read(r).unwrap().iter().map(|m| m.loss.to_bits()).collect::<Vec<_>>();
    assert_eq!(losses(&reference), losses(&run_dir));
}

#[test]
fn a_mistyped_data_path_is_an_error_and_writes_nothing() {
    let dir = workdir("mistyped");
    let cfg = RunConfig::miniature(2).write(&dir, "run");
    let before = snapshot(&dir);
    for path in [dir.join("shapes/nope.json"), dir.join("elsewhere/train.json")] {
        let out = run(&cfg, &["--set", &format!("data.train=\"{}\"", path.display())]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("data.train") && err.contains(&path.display().to_string()), "{err}");
        assert_eq!(snapshot(&dir), before, "nothing is generated or written for {}", path.display());
    }
}

#[test]
fn the_command_line_backend_is_used_and_recorded_and_a_finished_run_says_so() {
    let dir = workdir("backend");
    let cfg = RunConfig::miniature(2).write(&dir, "run");
    let out = run(&cfg, &["--backend", "ndarray", "--set", "schedule.warmup_steps=5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("never reaches optim.lr"), "a run inside warm-up is warned: {err}");
    let recorded = std::fs::read_to_string(dir.join("checkpoints/run/config.toml")).unwrap();
    assert!(recorded.contains("backend = \"ndarray\""), "{recorded}");

    let again = run(&cfg, &["--resume", "latest", "--backend", "ndarray", "--set", "schedule.warmup_steps=5"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&again.stdout), String::from_utf8_lossy(&again.stderr));
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("nothing left to do"), "{stderr}");
    assert!(stdout.contains("final: loss") && !stdout.contains("final: loss 0.000"), "{stdout}");
}

/// Per-step training records without held-out retrieval (evaluated at the last step of each
/// attempt).
fn records(run_dir: &Path) -> Vec<String> {
    common::records(run_dir, &["retrieval"])
}

#[test]
fn resume_auto_starts_fresh_without_a_checkpoint_and_continues_with_one() {
    let dir = workdir("auto");
    let cfg = RunConfig::miniature(6).write(&dir, "run");
    // A constant schedule: 3 steps then 3 more are the 6-step run.
    let constant = ["--set", "schedule.kind=\"constant\""];
    let run_dir = dir.join("checkpoints/run");
    // What an attempt stopped before its first checkpoint leaves behind.
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::write(run_dir.join("metrics.jsonl"), "").unwrap();
    let out = run(&cfg, &[&constant[..], &["--set", "train.steps=3", "--resume", "auto"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&cfg, &[&constant[..], &["--resume", "auto"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resumed from"));
    let straight = run(&cfg, &[&constant[..], &["--set", "train.run_name=\"straight\""]].concat());
    assert!(straight.status.success());
    let resumed = records(&run_dir);
    assert_eq!(resumed.len(), 6);
    assert_eq!(resumed, records(&dir.join("checkpoints/straight")));
}

/// A refused start leaves the disk as it found it: no empty run folder (nor its parents) after
/// a resume of a run that does not exist or a fresh start whose starting weights do not fit.
#[test]
fn a_refused_start_leaves_no_folder_behind() {
    let dir = workdir("refused-start");
    let cfg = RunConfig::miniature(2).write(&dir, "run");
    assert!(run(&cfg, &[]).status.success());
    let step = qformer::train::checkpoint::resolve(&dir.join("checkpoints/run")).unwrap();
    let weights = format!("init.weights=\"{}\"", step.display());
    let nested = format!("checkpoint.dir=\"{}\"", dir.join("elsewhere/checkpoints").display());
    for (name, args, sets) in [
        ("new", vec!["--resume", "latest"], vec![]),
        ("new", vec![], vec![weights.clone(), "model.num_query_tokens=6".into()]),
        ("new", vec![], vec![weights, "model.num_query_tokens=6".into(), nested]),
    ] {
        let out = common::qformer("train").config(&cfg).run_name(name).args(&args).sets(&sets).output();
        assert!(!out.status.success(), "{args:?} {sets:?}");
        assert!(!dir.join("checkpoints/new").exists(), "{args:?} {sets:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!dir.join("elsewhere").exists(), "{sets:?}: created parents are removed too");
    }
}

/// A damaged newest checkpoint: `--resume latest` refuses it and names the newest intact one,
/// `--resume auto` continues from that one; evaluation reads a run whose optimizer file is
/// damaged (it does not read it); starting weights in a damaged step folder are refused, and a
/// run folder works as starting weights.
#[test]
fn a_damaged_checkpoint_is_passed_over_by_resume_auto_and_refused_as_weights() {
    let dir = workdir("damaged");
    let cfg = RunConfig::miniature(3).write(&dir, "run");
    let run_dir = dir.join("checkpoints/run");
    assert!(run(&cfg, &[]).status.success());
    std::fs::write(run_dir.join("step-00000003/model.safetensors"), b"torn").unwrap();

    let latest = run(&cfg, &["--resume", "latest", "--set", "train.steps=4"]);
    let err = String::from_utf8_lossy(&latest.stderr);
    assert!(!latest.status.success() && err.contains("step-00000002") && err.contains("--resume auto"), "{err}");

    let damaged_weights = format!("init.weights=\"{}\"", run_dir.join("step-00000003").display());
    let out = common::qformer("train").config(&cfg).run_name("other").sets([damaged_weights]).output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("checksum mismatch"), "{err}");

    let auto = run(&cfg, &["--resume", "auto", "--set", "train.steps=4"]);
    let err = String::from_utf8_lossy(&auto.stderr);
    assert!(auto.status.success(), "{err}");
    assert!(err.contains("passed over") && err.contains("step-00000003") && err.contains("resumed from"), "{err}");
    assert!(run_dir.join("step-00000004").exists());

    std::fs::write(run_dir.join("step-00000004/optimizer.safetensors"), b"torn").unwrap();
    let eval = common::qformer("eval").arg("--checkpoint").arg(&run_dir).args(["--max-images", "4"]).output();
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));

    let from_run = format!("init.weights=\"{}\"", run_dir.display());
    let out = common::qformer("train").config(&cfg).run_name("from-run").sets([from_run, "train.steps=1".into()]).output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("step-00000004/model.safetensors"), "{err}");
}

/// A resume judges the training data by content: the same annotations moved elsewhere resume;
/// other annotations at the same path are refused, naming `data.train`.
#[test]
fn a_moved_data_set_resumes_and_changed_data_is_refused() {
    let dir = workdir("moved-data");
    let cfg = RunConfig::miniature(2).write(&dir, "run");
    assert!(run(&cfg, &[]).status.success());
    std::fs::rename(dir.join("shapes"), dir.join("moved")).unwrap();
    let moved = |file: &str| format!("data.{file}=\"{}\"", dir.join(format!("moved/{file}.json")).display());
    let resumed = common::qformer("train")
        .config(&cfg)
        .run_name("run")
        .args(["--resume", "latest"])
        .sets([moved("train"), moved("eval"), "train.steps=3".into()])
        .output();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));

    let train = dir.join("moved/train.json");
    let mut records: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&train).unwrap()).unwrap();
    records.pop();
    std::fs::write(&train, serde_json::to_string(&records).unwrap()).unwrap();
    let refused = common::qformer("train")
        .config(&cfg)
        .run_name("run")
        .args(["--resume", "latest"])
        .sets([moved("train"), moved("eval"), "train.steps=4".into()])
        .output();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("data.train") && err.contains("not the data this run was trained on"), "{err}");
}

/// Relative paths work from any directory: in a config file relative to that file, on the
/// command line relative to the current directory; the run saves them absolute.
#[test]
fn a_config_runs_from_another_directory() {
    let dir = workdir("relative");
    RunConfig::miniature(1).write(&dir, "run");
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
    let cfg = dir.join("conf/relative.toml");
    std::fs::write(&cfg, "base = \"../run.toml\"\n\n[data]\ntrain = \"../shapes/train.json\"\n\n[checkpoint]\ndir = \"../runs\"\n")
        .unwrap();
    let out = common::qformer("train")
        .config(&cfg)
        .run_name("run")
        .sets(["data.eval=\"../shapes/eval.json\""])
        .command()
        .current_dir(dir.join("elsewhere"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saved = std::fs::read_to_string(dir.join("runs/run/config.toml")).unwrap();
    let shapes = dir.join("shapes");
    for file in ["train.json", "eval.json"] {
        assert!(saved.contains(&format!("\"{}\"", shapes.join(file).display())), "{file}: {saved}");
    }
}
