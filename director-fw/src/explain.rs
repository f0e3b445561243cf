//! `explain`: what the policy does to one packet, by the reference model, so that the
//! answer is the datapath's own logic rather than a second reading of the rules.

use std::net::IpAddr;

use director_fw_common::{config::NS_PER_SEC, Verdict};
use etherparse::PacketBuilder;
use serde::{Deserialize, Serialize};

use crate::{compile, model::Model, policy::Policy};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    Tcp,
    Udp,
    Icmp,
}

/// A peer entry that an address falls in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerMatch {
    pub role: String,
    pub cidr: String,
}

/// The machine-readable answer (`explain --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Explanation {
    pub verdict: String,
    pub rule: Option<String>,
    pub reason: Option<String>,
    /// How a packet passed without a rule: `unprotected`, `icmp-echo`, ...
    pub kind: Option<String>,
    /// The packet would be dropped, but audit mode lets it pass.
    pub audit: bool,
    /// The peer entries (role and CIDR) that the source and the destination fall in.
    pub src_peers: Vec<PeerMatch>,
    pub dst_peers: Vec<PeerMatch>,
}

impl Explanation {
    /// The model's verdict on a packet from `src` to `dst`, in words.
    pub fn of(policy: &Policy, verdict: Verdict, src: IpAddr, dst: IpAddr) -> Explanation {
        let mut e = Explanation {
            verdict: if verdict.passes() { "pass" } else { "drop" }.into(),
            rule: None,
            reason: None,
            kind: None,
            audit: false,
            src_peers: matches(policy, src),
            dst_peers: matches(policy, dst),
        };
        match verdict {
            Verdict::Pass(kind) => e.kind = Some(kind.name().into()),
            Verdict::Rule(index) => e.rule = Some(policy.rules[index as usize].id.clone()),
            Verdict::Drop(reason) => e.reason = Some(reason.name().into()),
            Verdict::Audit(reason) => {
                e.reason = Some(reason.name().into());
                e.audit = true;
            }
        }
        e
    }
}

fn matches(policy: &Policy, addr: IpAddr) -> Vec<PeerMatch> {
    policy
        .peers
        .iter()
        .filter(|p| p.net.contains(&addr))
        .map(|p| PeerMatch {
            role: policy.role_name(p.role).to_string(),
            cidr: p.net.to_string(),
        })
        .collect()
}

/// The first packet of a new connection: a TCP SYN, a UDP datagram or an ICMP echo request.
pub fn probe_frame(
    src: IpAddr,
    dst: IpAddr,
    probe: Probe,
    sport: u16,
    dport: u16,
) -> Result<Vec<u8>, String> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => return Err(format!("{src} and {dst} are of different IP versions")),
    };
    let mut frame = Vec::new();
    let written = match (probe, src) {
        (Probe::Tcp, _) => ip.tcp(sport, dport, 1, 64240).syn().write(&mut frame, &[]),
        (Probe::Udp, _) => ip.udp(sport, dport).write(&mut frame, &[]),
        (Probe::Icmp, IpAddr::V4(_)) => ip.icmpv4_echo_request(sport, 1).write(&mut frame, &[]),
        (Probe::Icmp, IpAddr::V6(_)) => ip.icmpv6_echo_request(sport, 1).write(&mut frame, &[]),
    };
    written.map_err(|err| err.to_string())?;
    Ok(frame)
}

/// The verdict on the first packet from `src` to `dst`, with no flows tracked yet.
pub fn explain(
    policy: &Policy,
    src: IpAddr,
    dst: IpAddr,
    probe: Probe,
    sport: u16,
    dport: u16,
) -> Result<Explanation, String> {
    let frame = probe_frame(src, dst, probe, sport, dport)?;
    let mut model = Model::new(policy, compile::config(policy));
    let verdict = model.judge(&frame, NS_PER_SEC);
    Ok(Explanation::of(policy, verdict, src, dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Policy {
        Policy::from_toml(
            "t",
            "profile = \"lync2013-single-director\"\n[peers]\nreverse-proxy=['198.18.1.10']\ndirector=['198.18.2.10','2001:db8:2::10']\nedge-internal=['198.18.5.10']\n",
        )
        .unwrap()
    }

    fn ask(src: &str, dst: &str, probe: Probe, dport: u16) -> Explanation {
        explain(
            &lab(),
            src.parse().unwrap(),
            dst.parse().unwrap(),
            probe,
            40000,
            dport,
        )
        .unwrap()
    }

    #[test]
    fn rules_pass_by_name() {
        let e = ask("198.18.1.10", "198.18.2.10", Probe::Tcp, 4443);
        assert_eq!(
            (e.verdict.as_str(), e.rule.as_deref()),
            ("pass", Some("rp-director-https"))
        );
        assert_eq!(
            e.dst_peers,
            [PeerMatch {
                role: "director".into(),
                cidr: "198.18.2.10/32".into()
            }]
        );
        let e = ask("198.18.9.9", "198.18.5.10", Probe::Tcp, 50002);
        assert_eq!(e.rule.as_deref(), Some("any-edge-cls"));
    }

    #[test]
    fn drops_say_why() {
        let e = ask("198.18.1.10", "198.18.2.10", Probe::Tcp, 4444);
        assert_eq!(
            (e.verdict.as_str(), e.reason.as_deref()),
            ("drop", Some("no-rule"))
        );
        let mixed = explain(
            &lab(),
            "198.18.1.10".parse().unwrap(),
            "2001:db8:2::10".parse().unwrap(),
            Probe::Tcp,
            1,
            4443,
        );
        assert!(mixed.is_err());
    }

    #[test]
    fn unprotected_and_echo() {
        let e = ask("198.18.2.10", "198.18.9.9", Probe::Udp, 53);
        assert_eq!(
            (e.verdict.as_str(), e.kind.as_deref()),
            ("pass", Some("unprotected"))
        );
        let e = ask("198.18.9.9", "198.18.2.10", Probe::Icmp, 0);
        assert_eq!(e.kind.as_deref(), Some("icmp-echo"));
    }
}
