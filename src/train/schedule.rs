//! Learning-rate schedules. `Cosine`: linear warm-up from `warmup_lr`, then per-step cosine to
//! `min_lr` at the last step (the paper's description). `Staircase`: LAVIS's
//! `linear_warmup_cosine_lr`, warm-up within epoch 0, then one cosine value per epoch.

use crate::train::config::{ScheduleConfig, ScheduleKind};

/// Learning rate at optimizer step `step` (0-based) of `total`, for a peak of `peak`.
pub fn lr_at(cfg: &ScheduleConfig, peak: f64, step: u64, total: u64, steps_per_epoch: u64) -> f64 {
    let warm = |i: u64| cfg.warmup_lr + (peak - cfg.warmup_lr) * i as f64 / cfg.warmup_steps.max(1) as f64;
    match cfg.kind {
        ScheduleKind::Staircase => {
            let spe = steps_per_epoch.max(1);
            let (epoch, i) = (step / spe, step % spe);
            if epoch == 0 {
                warm(i).min(peak)
            } else {
                let max_epoch = total.div_ceil(spe).max(1) as f64;
                (peak - cfg.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / max_epoch).cos()) + cfg.min_lr
            }
        }
        _ if step < cfg.warmup_steps => warm(step),
        ScheduleKind::Constant => peak,
        ScheduleKind::Cosine => {
            let span = total.saturating_sub(cfg.warmup_steps).saturating_sub(1).max(1) as f64;
            let progress = ((step - cfg.warmup_steps) as f64 / span).min(1.0);
            cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lavis_staircase_values() {
        // LAVIS stage one: 5000 warm-up steps from 1e-6 to 1e-4 in epoch 0, then per-epoch cosine
        // towards 1e-5 over 10 epochs.
        let cfg = ScheduleConfig { kind: ScheduleKind::Staircase, warmup_steps: 5000, warmup_lr: 1e-6, min_lr: 1e-5 };
        let spe = 10_000;
        let lr = |s| lr_at(&cfg, 1e-4, s, 10 * spe, spe);
        assert!((lr(0) - 1e-6).abs() < 1e-15);
        assert!((lr(2500) - 5.05e-5).abs() < 1e-12);
        assert_eq!(lr(7000), 1e-4);
        let table = [9.780e-5, 9.141e-5, 8.145e-5, 6.891e-5, 5.500e-5, 4.109e-5, 2.855e-5, 1.859e-5, 1.220e-5];
        for (e, want) in table.iter().enumerate() {
            let epoch = e as u64 + 1;
            assert!((lr(epoch * spe) - want).abs() < 5e-9, "epoch {epoch}");
            assert_eq!(lr(epoch * spe), lr(epoch * spe + spe - 1), "constant within epoch {epoch}");
        }
    }

    #[test]
    fn cosine_warms_up_then_reaches_min_at_the_end() {
        let cfg = ScheduleConfig { kind: ScheduleKind::Cosine, warmup_steps: 10, warmup_lr: 0.0, min_lr: 1e-5 };
        assert_eq!(lr_at(&cfg, 1e-4, 0, 110, 1), 0.0);
        assert!((lr_at(&cfg, 1e-4, 5, 110, 1) - 5e-5).abs() < 1e-15);
        assert!((lr_at(&cfg, 1e-4, 10, 110, 1) - 1e-4).abs() < 1e-15);
        assert!((lr_at(&cfg, 1e-4, 109, 110, 1) - 1e-5).abs() < 1e-15);
        let mid = lr_at(&cfg, 1e-4, 10 + 99 / 2, 110, 1);
        assert!((mid - 5.5e-5).abs() < 1e-6, "{mid}");
    }
}
