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
