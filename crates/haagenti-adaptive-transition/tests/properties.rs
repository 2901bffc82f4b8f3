//! Plans agree with their schedules, for every preset and for arbitrary per-step schedules.

use haagenti_adaptive_core::{
    AdaptiveError, Precision, PrecisionCapabilities, TransitionStrategy, weight_mb,
};
use haagenti_adaptive_schedule::{PrecisionSchedule, ProfilePreset, ScheduleConfig};
use haagenti_adaptive_transition::{PrecisionTransition, TransitionPlan, TransitionPlanner};
use proptest::prelude::*;

fn strategy() -> impl Strategy<Value = TransitionStrategy> {
    prop_oneof![
        Just(TransitionStrategy::Immediate),
        (1u32..8).prop_map(|steps| TransitionStrategy::Gradual { steps }),
        Just(TransitionStrategy::StepAware),
    ]
}

fn capabilities() -> impl Strategy<Value = PrecisionCapabilities> {
    prop_oneof![
        Just(PrecisionCapabilities::modern_gpu(8192)),
        Just(PrecisionCapabilities::legacy_gpu(8192)),
        Just(PrecisionCapabilities::cpu(8192)),
    ]
}

/// Runs of one precision as (start, end, precision).
fn runs(s: &PrecisionSchedule) -> Vec<(u32, u32, Precision)> {
    let mut out: Vec<(u32, u32, Precision)> = Vec::new();
    for st in &s.steps {
        match out.last_mut() {
            Some(r) if r.2 == st.precision => r.1 = st.step + 1,
            _ => out.push((st.step, st.step + 1, st.precision)),
        }
    }
    out
}

/// Everything a plan promises about its schedule, against the schedule it was made from.
fn check(plan: &TransitionPlan, original: &PrecisionSchedule, min_gap: u32) {
    let s = &plan.schedule;
    assert_eq!(s.steps.len(), original.steps.len());
    for (a, b) in s.steps.iter().zip(&original.steps) {
        assert!(a.precision >= b.precision, "step {} lowered", a.step);
    }
    if min_gap <= 1 {
        let same: Vec<_> = s.steps.iter().map(|x| x.precision).collect();
        let orig: Vec<_> = original.steps.iter().map(|x| x.precision).collect();
        assert_eq!(same, orig, "a gap of 1 merges nothing");
    }
    // Interior runs are at least min_gap long.
    let rs = runs(s);
    if rs.len() > 2 {
        for r in &rs[1..rs.len() - 1] {
            assert!(r.1 - r.0 >= min_gap, "run {r:?} shorter than {min_gap}");
        }
    }
    // One transition a change, in order, each valid.
    let listed: Vec<_> = plan
        .transitions
        .iter()
        .map(|t| (t.start_step, t.from, t.to))
        .collect();
    assert_eq!(listed, s.transitions);
    assert!(plan.transitions.iter().all(|t| t.validate().is_ok()));
    // Per step: the blend factor and resident copies follow the transitions.
    for st in &s.steps {
        let t = plan.transition_at(st.step);
        let expected = t.filter(|t| t.is_blend()).and_then(|t| t.blend_at(st.step));
        assert_eq!(st.blend_factor, expected, "step {}", st.step);
        assert_eq!(plan.blend_at(st.step), st.blend_factor);
        let resident = plan.resident_at(st.step).unwrap();
        assert!(resident.contains(&st.precision));
        assert_eq!(
            resident.len(),
            if st.blend_factor.is_some() { 2 } else { 1 }
        );
        if let Some(t) = t.filter(|t| t.is_blend()) {
            assert_eq!(resident, {
                let mut v = vec![t.from, t.to];
                v.sort();
                v
            });
            // Windows stay inside the run they start.
            assert!(t.end_step as usize <= s.steps.len());
            assert!(
                s.steps[t.start_step as usize..t.end_step as usize]
                    .iter()
                    .all(|x| x.precision == t.to)
            );
        }
    }
    assert_eq!(
        plan.resident_at(s.steps.len() as u32),
        Err(AdaptiveError::InvalidStep {
            step: s.steps.len() as u32,
            total_steps: s.steps.len() as u32
        })
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn plans_agree_with_preset_schedules(
        preset in prop::sample::select(ProfilePreset::all().to_vec()),
        steps in 1u32..=1000,
        caps in capabilities(),
        strategy in strategy(),
        min_gap in 0u32..8,
    ) {
        let config = ScheduleConfig::with_preset(preset)
            .steps(steps)
            .capabilities(caps)
            .strategy(strategy)
            .min_quality(0.0);
        let schedule = PrecisionSchedule::generate(config).unwrap();
        let plan = TransitionPlanner::new(8192).with_min_gap(min_gap).plan_schedule(&schedule).unwrap();
        check(&plan, &schedule, min_gap);
        // With a gap of 1 the plan keeps the schedule exactly, blends included.
        let exact = TransitionPlanner::new(8192).with_min_gap(1).plan_schedule(&schedule).unwrap();
        prop_assert_eq!(&exact.schedule.steps, &schedule.steps);
        prop_assert_eq!(exact.transitions.len(), schedule.transitions.len());
        let json = serde_json::to_string(&plan).unwrap();
        prop_assert_eq!(serde_json::from_str::<TransitionPlan>(&json).unwrap(), plan);
    }

    #[test]
    fn plans_agree_with_arbitrary_schedules(
        precisions in prop::collection::vec(prop::sample::select(Precision::ALL.to_vec()), 1..300),
        strategy in strategy(),
        min_gap in 0u32..8,
    ) {
        let config = ScheduleConfig::default().strategy(strategy);
        let schedule = PrecisionSchedule::from_precisions(config, "random", &precisions).unwrap();
        let plan = TransitionPlanner::new(8192).with_min_gap(min_gap).plan_schedule(&schedule).unwrap();
        check(&plan, &schedule, min_gap);
        // Planning the plan's own schedule again changes nothing.
        let again = TransitionPlanner::new(8192).with_min_gap(min_gap).plan_schedule(&plan.schedule).unwrap();
        prop_assert_eq!(again.schedule.steps, plan.schedule.steps.clone());
        prop_assert_eq!(again.merged_zones, 0);
        // plan_transitions on the schedule's zones gives the same transitions.
        let zones = runs(&schedule);
        let planned = TransitionPlanner::new(8192)
            .with_min_gap(min_gap)
            .with_strategy(strategy)
            .plan_transitions(&zones);
        prop_assert_eq!(planned, plan.transitions);
    }

    #[test]
    fn memory_plans_fit_or_say_why(
        precisions in prop::collection::vec(prop::sample::select(Precision::ALL.to_vec()), 1..100),
        strategy in strategy(),
        params in 1u64..20_000_000_000,
        vram_mb in 1u64..100_000,
    ) {
        let config = ScheduleConfig::default().strategy(strategy);
        let schedule = PrecisionSchedule::from_precisions(config, "random", &precisions).unwrap();
        let planner = TransitionPlanner::new(vram_mb).with_min_gap(1).with_model_params(params);
        let largest = precisions.iter().map(|&p| weight_mb(params, p)).max().unwrap();
        match planner.plan_schedule(&schedule) {
            Ok(plan) => {
                prop_assert!(largest <= vram_mb);
                let peak = plan.peak_vram_mb.unwrap();
                prop_assert!(peak <= vram_mb, "peak {} over {}", peak, vram_mb);
                prop_assert!(peak >= largest);
                check(&plan, &schedule, 1);
                for t in plan.transitions.iter().filter(|t| t.is_blend()) {
                    prop_assert!(t.peak_mb(params) <= vram_mb);
                }
            }
            Err(AdaptiveError::VramConstraint { required_mb, available_mb }) => {
                prop_assert_eq!(available_mb, vram_mb);
                prop_assert!(required_mb > vram_mb);
                prop_assert!(largest > vram_mb);
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }

    #[test]
    fn arbitrary_json_never_panics(text in ".{0,200}") {
        let _ = serde_json::from_str::<PrecisionTransition>(&text);
        let _ = serde_json::from_str::<TransitionPlanner>(&text);
        let _ = serde_json::from_str::<TransitionPlan>(&text);
    }
}
