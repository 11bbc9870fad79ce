//! Native tests of GCRA with injected time.

use super::*;

const S: u64 = US_PER_SECOND;
/// An arbitrary start, far from 0 so that "fresh" (state 0) is in the past.
const T0: u64 = 1_764_000_000 * S;

fn ten_per_second() -> Limit {
    Limit::new(10, 1, 10).unwrap()
}

/// Runs `n` one-unit requests at `now`, returns how many were admitted and the final state.
fn run(state: u64, now: u64, limit: &Limit, n: u64) -> (u64, u64) {
    let mut s = state;
    let mut admitted = 0;
    for _ in 0..n {
        let (a, next) = admit(s, now, limit, 1);
        if a == Admit::Admit {
            admitted += 1;
        }
        s = next;
    }
    (admitted, s)
}

#[test]
fn limit_parameters() {
    let l = ten_per_second();
    assert_eq!((l.emission_us, l.tolerance_us), (100_000, 1_000_000));
    let odd = Limit::new(7, 3600, 3).unwrap();
    assert_eq!(odd.emission_us, 514_285_715, "rounded up: never admits more than the rate");
    assert_eq!(odd.tolerance_us, 3 * 514_285_715);
    assert!(Limit::new(0, 1, 1).is_none());
    assert!(Limit::new(1, 0, 1).is_none());
    assert!(Limit::new(1, 1, 0).is_none());
    assert!(Limit::new(1_000_001, 1, 1).is_none(), "more than one unit per µs");
    assert_eq!(Limit::new(1_000_000, 1, 1).unwrap().emission_us, 1);
}

#[test]
fn burst_then_refill_one_unit_per_interval() {
    let l = ten_per_second();
    let (n, s) = run(0, T0, &l, 15);
    assert_eq!(n, 10, "a fresh bucket admits the burst at once");
    assert_eq!(remaining(s, T0, &l), 0);
    assert_eq!(reset_us(s, T0), S, "full again after one second");
    assert_eq!(admit(s, T0, &l, 1), (Admit::Deny { retry_after_us: Some(100_000) }, s), "denied leaves the state");
    // Boundaries: 1 µs before the next unit, denied; exactly at it, admitted, then nothing more.
    assert_eq!(admit(s, T0 + 99_999, &l, 1), (Admit::Deny { retry_after_us: Some(1) }, s));
    let (a, s2) = admit(s, T0 + 100_000, &l, 1);
    assert_eq!(a, Admit::Admit);
    assert_eq!(s2, s + 100_000);
    assert!(matches!(admit(s2, T0 + 100_000, &l, 1).0, Admit::Deny { .. }));
    // Half a second later: 5 units.
    assert_eq!(remaining(s, T0 + S / 2, &l), 5);
    assert_eq!(run(s, T0 + S / 2, &l, 9).0, 5);
    // A full period later the bucket is full again, never fuller.
    assert_eq!(remaining(s, T0 + 10 * S, &l), 10);
    assert_eq!(run(s, T0 + 10 * S, &l, 20).0, 10);
    assert_eq!(reset_us(s, T0 + 10 * S), 0);
}

#[test]
fn sustained_demand_admits_burst_plus_rate() {
    // 100 per 10 s, burst 100; a request every millisecond for 10 s (10,001 requests).
    let l = Limit::new(100, 10, 100).unwrap();
    let mut s = 0;
    let mut admitted = 0;
    for ms in 0..=10_000u64 {
        let (a, next) = admit(s, T0 + ms * 1_000, &l, 1);
        admitted += u64::from(a == Admit::Admit);
        s = next;
    }
    assert_eq!(admitted, 200, "the burst of 100, then one per 100 ms over 10 s");
}

#[test]
fn cost_counts_units_and_cost_above_burst_is_never_admitted() {
    let l = ten_per_second();
    let (a, s) = admit(0, T0, &l, 4);
    assert_eq!(a, Admit::Admit);
    assert_eq!(remaining(s, T0, &l), 6);
    assert_eq!(admit(s, T0, &l, 7).0, Admit::Deny { retry_after_us: Some(100_000) });
    let (a, s) = admit(s, T0, &l, 6);
    assert_eq!((a, remaining(s, T0, &l)), (Admit::Admit, 0));
    assert_eq!(admit(0, T0, &l, 10).0, Admit::Admit, "cost == burst fits a full bucket");
    for state in [0, s, u64::MAX] {
        assert_eq!(admit(state, T0 + 100 * S, &l, 11), (Admit::Deny { retry_after_us: None }, state), "cost > burst: never");
    }
    assert_eq!(admit(s, T0, &l, 0), (Admit::Deny { retry_after_us: Some(100_000) }, s), "cost 0 is checked as one unit");
    let (_, part) = admit(0, T0, &l, 3);
    assert_eq!(admit(part, T0, &l, 0), (Admit::Admit, part), "and charges nothing");
}

#[test]
fn clock_going_backwards_never_grants_extra() {
    let l = ten_per_second();
    let (_, s) = run(0, T0, &l, 10);
    // Time jumps back 10 s: the drained bucket stays drained; waiting is measured from the new now.
    assert_eq!(admit(s, T0 - 10 * S, &l, 1), (Admit::Deny { retry_after_us: Some(10 * S + 100_000) }, s));
    assert_eq!(remaining(s, T0 - 10 * S, &l), 0);

    // A long jittery run: whatever the clock does, admitted units never exceed
    // burst + (latest time seen − first time) / T.
    let mut rng = 0x1234_5678_u64;
    let mut next = || {
        rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        crate::key::mix(rng)
    };
    let (mut s, mut now, mut latest, mut admitted) = (0u64, T0, T0, 0u64);
    for _ in 0..100_000 {
        let r = next();
        now = if r % 4 == 0 { now.saturating_sub(r % (3 * S)) } else { now + r % 20_000 };
        latest = latest.max(now);
        let (a, n) = admit(s, now, &l, 1);
        assert!(n >= s, "the state never decreases");
        admitted += u64::from(a == Admit::Admit);
        s = n;
    }
    assert!(admitted <= 10 + (latest - T0) / l.emission_us, "admitted {admitted}, latest {latest}");
    assert!(admitted > 0);
}

#[test]
fn arithmetic_saturates() {
    let huge = Limit::new(1, MAX_PERIOD, 1_000_000_000).unwrap();
    for (state, now, cost) in
        [(u64::MAX, u64::MAX, u64::MAX), (0, u64::MAX, 1), (u64::MAX, 0, 1), (0, 0, 1_000_000_000), (u64::MAX - 1, u64::MAX, 2)]
    {
        for l in [huge, ten_per_second(), Limit::new(1_000_000, 1, 1).unwrap()] {
            let (a, n) = admit(state, now, &l, cost);
            assert!(n >= state);
            if a == Admit::Admit {
                assert!(n >= now || n == u64::MAX);
            }
            let _ = (remaining(n, now, &l), reset_us(n, now), limited_from(n, &l), is_limited(n, now, &l));
        }
    }
    // A state saturated at the end of time denies forever instead of wrapping to "fresh".
    assert!(matches!(admit(u64::MAX, T0, &ten_per_second(), 1).0, Admit::Deny { .. }));
}
const MAX_PERIOD: u64 = 31_536_000;

#[test]
fn several_limits_deny_if_any_and_charge_none_when_denied() {
    let per_second = Limit::new(10, 1, 20).unwrap();
    let per_hour = Limit::new(100, 3600, 100).unwrap();
    let limits = [per_second, per_hour];
    let mut states = vec![0, 0];
    let mut admitted = 0;
    for _ in 0..25 {
        let r = admit_all(&states, T0, &limits, 1);
        if r.admitted() {
            admitted += 1;
        } else {
            assert_eq!(r.denied, [0], "only the per-second limit denies");
            assert_eq!(r.retry_after_us, Some(100_000));
            assert_eq!(r.states, states, "nothing charged");
        }
        states = r.states;
    }
    assert_eq!(admitted, 20);
    assert_eq!(remaining(states[1], T0, &per_hour), 80, "the hourly limit was charged for the 20 admitted only");

    // Much later the per-second bucket is full but the hourly one has 80 left: drain it.
    let later = T0 + 60 * S;
    let mut n = 0;
    for i in 0..200u64 {
        let r = admit_all(&states, later + i * 100_000, &limits, 1);
        n += u64::from(r.admitted());
        if !r.admitted() {
            assert_eq!(r.denied, [1]);
            assert_eq!(r.states, states);
        }
        states = r.states;
    }
    assert!((80..=82).contains(&n), "{n}: the hourly rest plus its refill over 80 s");

    // Both deny: the longest wait is reported; a cost above one burst makes it "never".
    let both = admit_all(&[T0 + 2 * S, T0 + 3600 * S], T0, &limits, 1);
    assert_eq!(both.denied, [0, 1]);
    assert_eq!(both.retry_after_us, Some(36 * S), "the hourly wait (one unit = 36 s) beats the per-second one");
    let never = admit_all(&[0, 0], T0, &limits, 50);
    assert!(never.never && never.retry_after_us.is_none() && never.denied == [0]);
    assert_eq!(never.states, [0, 0]);
    // Missing states are fresh buckets.
    assert!(admit_all(&[], T0, &limits, 1).admitted());
}

#[test]
fn limited_from_marks_exhausted_buckets() {
    let l = ten_per_second();
    let (_, s) = run(0, T0, &l, 9);
    assert!(!is_limited(s, T0, &l), "one unit left");
    let (_, s) = run(s, T0, &l, 1);
    assert!(is_limited(s, T0, &l));
    assert_eq!(limited_from(s, &l), T0 + 100_000);
    assert!(!is_limited(s, T0 + 100_000, &l));
    assert!(!is_limited(0, T0, &l));
}
