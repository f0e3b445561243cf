//! Statistics over rounds, the table and `target/bench/lab.json`.

use super::*;

pub(crate) fn stat(values: &[f64]) -> Value {
    let (lo, hi) = min_max(values);
    let num = |x: f64| {
        if x.is_finite() {
            json!((x * 1000.0).round() / 1000.0)
        } else {
            Value::Null
        }
    };
    json!({"median": num(median(values)), "min": num(lo), "max": num(hi), "rounds": values.iter().map(|&x| num(x)).collect::<Vec<_>>()})
}

pub(crate) type Results = BTreeMap<(Mix, Filter), Vec<(usize, Sample)>>;

/// Per round that both have, `g(filter's sample, reference's sample)`.
fn paired(
    results: &Results,
    mix: Mix,
    filter: Filter,
    reference: Filter,
    g: impl Fn(&Sample, &Sample) -> Option<f64>,
) -> Vec<f64> {
    let (Some(ours), Some(theirs)) = (results.get(&(mix, filter)), results.get(&(mix, reference)))
    else {
        return Vec::new();
    };
    ours.iter()
        .filter_map(|(round, s)| g(s, &theirs.iter().find(|(r, _)| r == round)?.1))
        .collect()
}

/// Per round, `f(filter's sample) / f(reference's sample)`.
pub(crate) fn ratios(
    results: &Results,
    mix: Mix,
    filter: Filter,
    reference: Filter,
    f: impl Fn(&Sample) -> f64,
) -> Vec<f64> {
    paired(results, mix, filter, reference, |s, r| {
        let d = f(r);
        (d > 0.0).then(|| f(s) / d)
    })
}

/// Per round, dropped packets against nftables'; none where the mix denies nothing, whose
/// few "drops" are counter skew between the two ends.
fn dropped_vs_nft(results: &Results, mix: Mix, filter: Filter) -> Vec<f64> {
    if mix.deny_share() == 0 {
        return Vec::new();
    }
    ratios(results, mix, filter, Filter::Nft, Sample::dropped)
}

/// Per round, the extra nanoseconds per received packet over the reference.
pub(crate) fn extra_ns(results: &Results, mix: Mix, filter: Filter, reference: Filter) -> Vec<f64> {
    paired(results, mix, filter, reference, |s, r| {
        (s.received > 0.0 && r.received > 0.0).then(|| 1e9 / s.received - 1e9 / r.received)
    })
}

pub(crate) fn mpps(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}", x / 1e6)
    } else {
        "-".into()
    }
}

pub(crate) fn ratio_text(values: &[f64]) -> String {
    let m = median(values);
    if m.is_finite() {
        format!("{m:.2}")
    } else {
        "-".into()
    }
}

pub(crate) fn print_table(args: &Args, results: &Results) {
    println!();
    println!(
        "Lab throughput at the gateway, 64-byte frames, median of {} round(s) of {:.1} s [min-max]; \
         ratios are per round vs. no filter (x none) and vs. nftables (x nft)",
        args.rounds, args.secs
    );
    for &mix in &args.mixes {
        println!("\nmix {}: {}", mix.name(), mix.describe());
        println!(
            "{:<16} {:>17} {:>17} {:>17} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9}",
            "filter",
            "handled Mpps",
            "dropped Mpps",
            "fwd Mpps",
            "hdl/no",
            "hdl/nft",
            "drp/nft",
            "fwd/no",
            "fwd/nft",
            "ns/pkt",
            "+ns vs no"
        );
        for &filter in &args.filters {
            let Some(samples) = results.get(&(mix, filter)) else {
                continue;
            };
            let col = |f: &dyn Fn(&Sample) -> f64| {
                let v: Vec<f64> = samples.iter().map(|(_, s)| f(s)).collect();
                let (lo, hi) = min_max(&v);
                format!("{} [{}-{}]", mpps(median(&v)), mpps(lo), mpps(hi))
            };
            let ns: Vec<f64> = samples.iter().map(|(_, s)| 1e9 / s.received).collect();
            let extra = extra_ns(results, mix, filter, Filter::None);
            println!(
                "{:<16} {:>17} {:>17} {:>17} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8.0} {:>9}",
                filter.name(),
                col(&|s| s.received),
                col(&|s| s.dropped()),
                col(&|s| s.forwarded),
                ratio_text(&ratios(results, mix, filter, Filter::None, |s| s.received)),
                ratio_text(&ratios(results, mix, filter, Filter::Nft, |s| s.received)),
                ratio_text(&dropped_vs_nft(results, mix, filter)),
                ratio_text(&ratios(results, mix, filter, Filter::None, |s| s.forwarded)),
                ratio_text(&ratios(results, mix, filter, Filter::Nft, |s| s.forwarded)),
                median(&ns),
                if filter == Filter::None {
                    "-".to_string()
                } else {
                    format!("{:+.0}", median(&extra))
                }
            );
        }
    }
}

/// The same policy in each filter's own language, recorded with the figures.
pub(crate) struct Rulesets<'a> {
    pub(crate) policy: &'a str,
    pub(crate) nft: &'a str,
    pub(crate) iptables: &'a str,
}

pub(crate) fn report(
    args: &Args,
    cpu: usize,
    results: &Results,
    skipped: &[(Filter, String)],
    rulesets: &Rulesets,
    elapsed: Duration,
) -> Value {
    let mut rows = Vec::new();
    for &mix in &args.mixes {
        for &filter in &args.filters {
            let Some(samples) = results.get(&(mix, filter)) else {
                continue;
            };
            let of = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> {
                samples.iter().map(|(_, s)| f(s)).collect()
            };
            let allowed_share = 1.0 - f64::from(mix.deny_share()) / 256.0;
            rows.push(json!({
                "mix": mix.name(),
                "filter": filter.name(),
                "received_pps": stat(&of(&|s| s.received)),
                "dropped_pps": stat(&of(&Sample::dropped)),
                "forwarded_pps": stat(&of(&|s| s.forwarded)),
                "sent_pps": stat(&of(&|s| s.sent)),
                "rx_ring_dropped_pps": stat(&of(&|s| s.rx_dropped)),
                "ns_per_packet": stat(&of(&|s| 1e9 / s.received)),
                "extra_ns_vs_none": stat(&extra_ns(results, mix, filter, Filter::None)),
                "extra_ns_vs_xdp_drop": stat(&extra_ns(results, mix, filter, Filter::XdpDrop)),
                "ratios": {
                    "received_vs_none": stat(&ratios(results, mix, filter, Filter::None, |s| s.received)),
                    "received_vs_nft": stat(&ratios(results, mix, filter, Filter::Nft, |s| s.received)),
                    "dropped_vs_nft": stat(&dropped_vs_nft(results, mix, filter)),
                    "forwarded_vs_none": stat(&ratios(results, mix, filter, Filter::None, |s| s.forwarded)),
                    "forwarded_vs_nft": stat(&ratios(results, mix, filter, Filter::Nft, |s| s.forwarded)),
                },
                "checks": {
                    "denied_forwarded_pps": stat(&of(&|s| s.fwd_denied)),
                    "allowed_forwarded_pps": stat(&of(&|s| s.fwd_allowed)),
                    "allowed_delivered_fraction": stat(&of(&|s| if allowed_share > 0.0 && s.received > 0.0 {
                        s.fwd_allowed / (s.received * allowed_share)
                    } else { f64::NAN })),
                },
                "secs": stat(&of(&|s| s.secs)),
            }));
        }
    }
    json!({
        "bench": "lab",
        "unit": "packets per second at the gateway; ratios per round, then median",
        "config": {
            "rounds": args.rounds,
            "secs": args.secs,
            "warmup_secs": args.warmup,
            "frame_bytes": FRAME_LEN,
            "generator": format!("lab_gen, BPF_PROG_RUN live frames (batch {BATCH}), XDP_TX from the internal-clients host's veth, 2 threads on CPU {cpu}"),
            "cpu": cpu,
            "sink": "lab_sink (native XDP, counts and drops) on the director host's veth",
            "mixes": args.mixes.iter().map(|m| json!({"name": m.name(), "denied_per_256": m.deny_share(), "what": m.describe()})).collect::<Vec<_>>(),
            "filters": args.filters.iter().map(|f| json!({"name": f.name(), "what": f.describe()})).collect::<Vec<_>>(),
            "policy_toml": rulesets.policy,
            "nftables_ruleset": rulesets.nft,
            "iptables_rules": rulesets.iptables,
        },
        "results": rows,
        "skipped": skipped.iter().map(|(f, why)| json!({"filter": f.name(), "reason": why})).collect::<Vec<_>>(),
        "elapsed_secs": elapsed.as_secs_f64(),
    })
}
