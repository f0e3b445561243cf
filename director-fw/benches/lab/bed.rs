//! The test bed: a lab prepared for one-way traffic from the clients host to the Director.

use super::*;

pub(crate) struct Bed {
    pub(crate) lab: Lab,
    pub(crate) gw: String,
    /// The gateway's veth facing the source: every filter attaches here.
    pub(crate) gw_in: String,
    pub(crate) src_ns: String,
    pub(crate) src_iface: String,
    pub(crate) src_ifindex: u32,
    pub(crate) src_mac: [u8; 6],
    pub(crate) gw_in_mac: [u8; 6],
    pub(crate) sink_ns: String,
    pub(crate) sink_iface: String,
    pub(crate) director: std::net::Ipv4Addr,
    pub(crate) sink_link: Option<XdpLinkId>,
}

impl Bed {
    pub(crate) fn new() -> Result<Bed> {
        let lab = Lab::new()?;
        let src = lab.host(Role::InternalClients).clone();
        let sink = lab.host(Role::Director).clone();
        let outsider = lab.host(Role::Outsider).clone();
        let gw = lab.gateway_ns().to_owned();
        write_sysctls(
            &gw,
            &[
                ("ipv4/conf/all/rp_filter", "0"),
                ("ipv4/conf/default/rp_filter", "0"),
                (&format!("ipv4/conf/{}/rp_filter", src.gw_iface), "0"),
            ],
        )?;
        let allow = format!("{}/{ALLOW_PREFIX}", std::net::Ipv4Addr::from(ALLOW_NET));
        let deny = format!("{}/{DENY_PREFIX}", std::net::Ipv4Addr::from(DENY_NET));
        ip_ns(&gw, &["route", "add", &allow, "via", &src.v4.to_string()])?;
        ip_ns(
            &gw,
            &["route", "add", &deny, "via", &outsider.v4.to_string()],
        )?;
        let sink_mac = link_info(&sink.ns, &sink.iface)?.mac;
        ip_ns(
            &gw,
            &[
                "neigh",
                "replace",
                &sink.v4.to_string(),
                "lladdr",
                &fmt_mac(&sink_mac),
                "dev",
                &sink.gw_iface,
                "nud",
                "permanent",
            ],
        )?;
        // NAPI on the gateway's ingress veth: without it (no XDP program, GRO off) frames
        // sent to it by XDP are dropped.
        run_in_netns(&gw, "ethtool", &["-K", &src.gw_iface, "gro", "on"], None)?;
        let src_link = link_info(&src.ns, &src.iface)?;
        Ok(Bed {
            gw_in_mac: link_info(&gw, &src.gw_iface)?.mac,
            src_mac: src_link.mac,
            src_ifindex: src_link.ifindex,
            gw,
            gw_in: src.gw_iface,
            src_ns: src.ns,
            src_iface: src.iface,
            sink_ns: sink.ns,
            sink_iface: sink.iface,
            director: sink.v4,
            sink_link: None,
            lab,
        })
    }

    /// The policy file text: the built-in profile, the lab's peers, and the allowed sources'
    /// prefix in internal-clients.
    pub(crate) fn policy_text(&self) -> String {
        let prefix = format!("\"{}/{ALLOW_PREFIX}\"", std::net::Ipv4Addr::from(ALLOW_NET));
        let mut text = String::from("profile = \"lync2013-single-director\"\n");
        for line in self.lab.peers_toml().lines() {
            if line.starts_with(Role::InternalClients.name()) {
                if let Some(head) = line.strip_suffix(']') {
                    let _ = writeln!(text, "{head}, {prefix}]");
                    continue;
                }
            }
            let _ = writeln!(text, "{line}");
        }
        text
    }

    pub(crate) fn gen_config(&self, mix: Mix) -> GenConfig {
        GenConfig {
            dst_mac: self.gw_in_mac,
            src_mac: self.src_mac,
            deny_share: mix.deny_share(),
            dst: u32::from(self.director),
            allow: GenKind {
                base: u32::from_be_bytes(ALLOW_NET),
                hosts_log2: u32::from(32 - ALLOW_PREFIX),
                ports_log2: 2,
                dport: ALLOW_PORT,
                flags: TCP_ACK,
                _pad: 0,
            },
            deny: GenKind {
                base: u32::from_be_bytes(DENY_NET),
                hosts_log2: u32::from(32 - DENY_PREFIX),
                ports_log2: 4,
                dport: DENY_PORT,
                flags: TCP_SYN,
                _pad: 0,
            },
        }
    }
}

pub(crate) fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
