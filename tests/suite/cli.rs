//! The command line tells the truth about itself: every option of every subcommand has a
//! description in `--help`, and options are offered only where they act.

const SUBCOMMANDS: [&str; 11] =
    ["train", "ablate", "bench-data", "synth", "check-loss", "cache-features", "eval", "caption", "report", "export", "bench"];

fn help(sub: &str) -> String {
    String::from_utf8(crate::common::qformer(sub).arg("--help").succeed().stdout).unwrap()
}

#[test]
fn every_option_has_a_description() {
    for sub in SUBCOMMANDS {
        for line in help(sub).lines().map(str::trim_start).filter(|l| l.starts_with('-')) {
            let description = line.split_once("  ").map_or("", |(_, rest)| rest.trim());
            assert!(!description.is_empty() && !description.starts_with("[default"), "`qformer {sub}`: `{line}` has no description");
        }
    }
}

#[test]
fn backend_is_offered_only_where_it_computes() {
    for sub in SUBCOMMANDS {
        let offered = help(sub).contains("--backend");
        let computes = !["bench-data", "synth", "report", "export"].contains(&sub);
        assert_eq!(offered, computes, "`qformer {sub}`: --backend offered {offered}");
    }
}

/// `synth --out` into a folder that holds a set is refused; `--overwrite` writes the new set
/// whole, with no image of the old one left.
#[test]
fn synth_refuses_an_existing_set_and_overwrite_leaves_no_stale_image() {
    let out = crate::common::workdir("synth-out").join("set");
    let synth = |n: &str, extra: &[&str]| {
        crate::common::qformer("synth").arg("--out").arg(&out).args(["--n", n, "--n-eval", "2", "--size", "16"]).args(extra).output()
    };
    assert!(synth("6", &[]).status.success());
    let images = || std::fs::read_dir(out.join("images")).unwrap().count();
    assert_eq!(images(), 8);
    let refused = synth("2", &[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("--overwrite") && err.contains("train.json"), "{err}");
    assert_eq!(images(), 8, "a refused synth writes nothing");
    assert!(synth("2", &["--overwrite"]).status.success());
    assert_eq!(images(), 4, "no image of the old set is left");
}

/// `caption` refuses settings that cannot decode: no beam, or a shortest caption above the longest.
#[test]
fn caption_refuses_impossible_lengths_and_beams() {
    for args in [["--beams", "0"], ["--min-len", "12"]] {
        let out = crate::common::qformer("caption").args(["--checkpoint", "nowhere", "--max-len", "8"]).args(args).arg("x.png").output();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && (err.contains("at least 1") || err.contains("above --max-len")), "{args:?}: {err}");
    }
}

/// `--backend` is judged with the config: half precision is refused for the backend the run would
/// use, named by key, before any data or device is touched (the config file says flex).
#[test]
fn precision_is_judged_for_the_backend_on_the_command_line() {
    let run = |args: &[&str]| {
        let out = crate::common::qformer("train").args(args).output();
        assert!(!out.status.success(), "{args:?} ran");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cpu = run(&["--set", "train.precision=f16"]);
    assert!(cpu.contains("train.precision") && cpu.contains("GPU backend"), "{cpu}");
    let wgpu = run(&["--backend", "wgpu", "--set", "train.precision=bf16"]);
    assert!(wgpu.contains("train.precision") && wgpu.contains("no bf16"), "{wgpu}");
    // f16 on wgpu passes, and the key checked after it is the one named.
    let next = run(&["--backend", "wgpu", "--set", "train.precision=f16", "--set", "schedule.min_lr=1"]);
    assert!(next.contains("schedule.min_lr") && !next.contains("train.precision"), "{next}");
}
