//! The filters compared, each installed on the gateway's ingress and removed again.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Filter {
    None,
    XdpDrop,
    /// F1 of the kernel bench as a passing filter: parse, one hash lookup, one counter.
    XdpLookupFloor,
    DfwXdp,
    DfwTc,
    Nft,
    Iptables,
    /// xdp-filter as it loads by default (every feature).
    XdpFilterAll,
    /// xdp-filter built for TCP only: its cheapest form.
    XdpFilterTcp,
}

impl Filter {
    pub(crate) const ALL: [Filter; 9] = [
        Filter::None,
        Filter::XdpDrop,
        Filter::XdpLookupFloor,
        Filter::DfwXdp,
        Filter::DfwTc,
        Filter::Nft,
        Filter::Iptables,
        Filter::XdpFilterAll,
        Filter::XdpFilterTcp,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Filter::None => "none",
            Filter::XdpDrop => "xdp-drop",
            Filter::XdpLookupFloor => "xdp-lookup-floor",
            Filter::DfwXdp => "director-fw-xdp",
            Filter::DfwTc => "director-fw-tc",
            Filter::Nft => "nftables",
            Filter::Iptables => "iptables-legacy",
            Filter::XdpFilterAll => "xdp-filter",
            Filter::XdpFilterTcp => "xdp-filter-tcp",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Filter::None => "no filter: the gateway only forwards",
            Filter::XdpDrop => {
                "XDP program that returns XDP_DROP (native), the floor of any XDP filter"
            }
            Filter::XdpLookupFloor => {
                "XDP program that parses, looks the destination up in a hash and counts, then \
                 passes (the kernel bench's F1), the floor of any XDP filter that consults a table"
            }
            Filter::DfwXdp => "director-fw, native XDP",
            Filter::DfwTc => "director-fw, TC (TCX) ingress",
            Filter::Nft => {
                "nftables inet prerouting chain with conntrack and concatenated interval sets"
            }
            Filter::Iptables => {
                "iptables-legacy filter table, conntrack and linear rules (own lab)"
            }
            Filter::XdpFilterAll => {
                "xdp-filter (xdp-tools) denying TCP port 22 only, native, default features"
            }
            Filter::XdpFilterTcp => {
                "xdp-filter (xdp-tools) denying TCP port 22 only, native, tcp feature only"
            }
        }
    }

    /// Whether the filter enforces the policy on the denied traffic: it must then let none
    /// of it through, or its figures are of a filter that does nothing.
    pub(crate) fn enforces(self) -> bool {
        !matches!(self, Filter::None | Filter::XdpLookupFloor)
    }

    /// The floors drop or pass everything, so each means something for one mix only.
    pub(crate) fn applies_to(self, mix: Mix) -> bool {
        match self {
            Filter::XdpDrop => mix == Mix::Deny,
            Filter::XdpLookupFloor => mix == Mix::Allow,
            _ => true,
        }
    }
}

/// What an installed filter leaves behind; dropping it removes the filter. The fields are
/// held only for their Drop.
#[allow(dead_code)]
pub(crate) enum Installed<'a> {
    Nothing,
    Drop(XdpDropGuard<'a>),
    // The link is held, not pinned: dropping it detaches.
    Dfw(Box<Datapath>, Attachment),
    Nft(NftGuard),
    Iptables(IptablesGuard),
    XdpFilter(XdpFilterGuard),
}

pub(crate) struct XdpDropGuard<'a> {
    pub(crate) program: &'a mut Xdp,
    pub(crate) link: Option<XdpLinkId>,
}

impl Drop for XdpDropGuard<'_> {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            let _ = self.program.detach(link);
        }
    }
}

pub(crate) struct NftGuard {
    pub(crate) ns: String,
}

pub(crate) const NFT_TABLE: &str = "dfw_bench";

impl Drop for NftGuard {
    fn drop(&mut self) {
        if let Err(e) = run_in_netns(
            &self.ns,
            "nft",
            &["delete", "table", "inet", NFT_TABLE],
            None,
        ) {
            eprintln!("lab bench: removing the nftables table: {e:#}");
        }
    }
}

pub(crate) struct IptablesGuard {
    pub(crate) ns: String,
}

impl Drop for IptablesGuard {
    fn drop(&mut self) {
        let empty =
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        if let Err(e) = run_in_netns(&self.ns, "iptables-legacy-restore", &[], Some(empty)) {
            eprintln!("lab bench: emptying the iptables rules: {e:#}");
        }
    }
}

pub(crate) const XDP_FILTER_PINS: &str = "/sys/fs/bpf/xdp-filter";
pub(crate) const LIBXDP_PINS: &str = "/sys/fs/bpf/xdp";

pub(crate) struct XdpFilterGuard {
    pub(crate) ns: String,
    pub(crate) iface: String,
    /// libxdp's pin directory did not exist before: remove it if it is left empty.
    pub(crate) remove_libxdp_dir: bool,
}

impl Drop for XdpFilterGuard {
    fn drop(&mut self) {
        if let Err(e) = run_in_netns(&self.ns, "xdp-filter", &["unload", &self.iface], None) {
            eprintln!("lab bench: unloading xdp-filter: {e:#}");
        }
        // xdp-filter pins its maps machine-wide, and an interrupted load or a failed unload
        // leaves them, which would make every later run skip it. They did not exist when
        // this guard was made, so whatever is there is this bench's.
        if let Err(e) = fs::remove_dir_all(XDP_FILTER_PINS) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("lab bench: removing {XDP_FILTER_PINS}: {e}");
            }
        }
        if self.remove_libxdp_dir {
            // Fails harmlessly when someone else put something there meanwhile.
            let _ = fs::remove_dir(LIBXDP_PINS);
        }
    }
}

/// Why a filter cannot run here, if it cannot.
pub(crate) fn unavailable(filter: Filter) -> Option<String> {
    let has = |program: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    match filter {
        Filter::Nft if !has("nft") => Some("nft is not installed (Debian nftables)".into()),
        Filter::Iptables if !has("iptables-legacy-restore") => {
            Some("iptables-legacy-restore is not installed (Debian iptables)".into())
        }
        Filter::XdpFilterAll | Filter::XdpFilterTcp if !has("xdp-filter") => Some(
            "xdp-filter is not installed (Debian xdp-tools; `cargo xtask` bootstrap installs it)"
                .into(),
        ),
        Filter::XdpFilterAll | Filter::XdpFilterTcp if Path::new(XDP_FILTER_PINS).exists() => {
            Some(format!(
                "{XDP_FILTER_PINS} exists: another xdp-filter is loaded on this machine, and \
             xdp-filter shares its maps machine-wide"
            ))
        }
        _ => None,
    }
}

pub(crate) fn ip_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.trunc().to_string()
    }
}

pub(crate) fn port_text(range: &std::ops::RangeInclusive<u16>, sep: char) -> String {
    if range.start() == range.end() {
        range.start().to_string()
    } else {
        format!("{}{sep}{}", range.start(), range.end())
    }
}

pub(crate) fn nets_of(policy: &Policy, role: usize, v4: bool) -> Vec<IpNet> {
    policy
        .peers
        .iter()
        .filter(|p| p.role == role && matches!(p.net, IpNet::V4(_)) == v4)
        .map(|p| p.net)
        .collect()
}

pub(crate) fn protected_nets(policy: &Policy, v4: bool) -> Vec<IpNet> {
    let mask = policy.to_mask();
    let mut nets: Vec<IpNet> = policy
        .peers
        .iter()
        .filter(|p| mask & director_fw::policy::bit(p.role) != 0)
        .filter(|p| matches!(p.net, IpNet::V4(_)) == v4)
        .map(|p| p.net)
        .collect();
    nets.sort();
    nets.dedup();
    nets
}

pub(crate) fn check_default_options(policy: &Policy) -> Result<()> {
    ensure!(
        policy.options.unprotected == Unprotected::Pass
            && policy.options.icmp_echo == IcmpEcho::Allow
            && !policy.options.audit,
        "the nftables/iptables translations assume the default options"
    );
    Ok(())
}

/// The policy as an expert writes it for nftables.
pub(crate) fn nft_ruleset(policy: &Policy) -> Result<String> {
    check_default_options(policy)?;
    let mut sets = String::new();
    let mut rules = String::new();
    for (v4, fam, ty) in [(true, "ip", "ipv4_addr"), (false, "ip6", "ipv6_addr")] {
        let suffix = if v4 { "4" } else { "6" };
        let protected: Vec<String> = protected_nets(policy, v4).iter().map(ip_text).collect();
        let _ = writeln!(
            sets,
            "\tset protected{suffix} {{ type {ty}; flags interval;{} }}",
            elements(&protected)
        );
        for proto in ["tcp", "udp"] {
            let mut pairs = Vec::new();
            let mut anys = Vec::new();
            for rule in policy.rules.iter().filter(|r| r.protocol.name() == proto) {
                for dst in nets_of(policy, rule.to, v4) {
                    for ports in &rule.ports {
                        let (d, p) = (ip_text(&dst), port_text(ports, '-'));
                        match rule.from {
                            Source::Any => anys.push(format!("{d} . {p}")),
                            Source::Role(from) => {
                                for src in nets_of(policy, from, v4) {
                                    pairs.push(format!("{} . {d} . {p}", ip_text(&src)));
                                }
                            }
                        }
                    }
                }
            }
            if !pairs.is_empty() {
                let _ = writeln!(
                    sets,
                    "\tset allow{suffix}_{proto} {{ type {ty} . {ty} . inet_service; flags interval;{} }}",
                    elements(&pairs)
                );
                let _ = writeln!(
                    rules,
                    "\t\t{fam} saddr . {fam} daddr . {proto} dport @allow{suffix}_{proto} accept"
                );
            }
            if !anys.is_empty() {
                let _ = writeln!(
                    sets,
                    "\tset any{suffix}_{proto} {{ type {ty} . inet_service; flags interval;{} }}",
                    elements(&anys)
                );
                let _ = writeln!(
                    rules,
                    "\t\t{fam} daddr . {proto} dport @any{suffix}_{proto} accept"
                );
            }
        }
    }
    Ok(format!(
        "table inet {NFT_TABLE} {{\n{sets}\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority filter; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\tip daddr != @protected4 accept\n\
         \t\tip6 daddr != @protected6 accept\n\
         \t\ticmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect }} accept\n\
         \t\ticmp type echo-request accept\n\
         \t\ticmpv6 type echo-request accept\n\
         {rules}\
         \t\tdrop\n\
         \t}}\n}}\n"
    ))
}

pub(crate) fn elements(items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", items.join(", "))
    }
}

/// The policy as linear iptables rules (IPv4: the bench's traffic is IPv4).
pub(crate) fn iptables_ruleset(policy: &Policy) -> Result<String> {
    check_default_options(policy)?;
    let mut text = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:dfw - [0:0]\n\
         -A INPUT -j dfw\n-A FORWARD -j dfw\n\
         -A dfw -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A dfw -m conntrack --ctstate INVALID -j DROP\n\
         -A dfw -p icmp -m icmp --icmp-type echo-request -j ACCEPT\n",
    );
    for rule in &policy.rules {
        let proto = rule.protocol.name();
        for dst in nets_of(policy, rule.to, true) {
            for ports in &rule.ports {
                let tail = format!(
                    "-d {} -p {proto} -m {proto} --dport {} -j ACCEPT",
                    ip_text(&dst),
                    port_text(ports, ':')
                );
                match rule.from {
                    Source::Any => {
                        let _ = writeln!(text, "-A dfw {tail}");
                    }
                    Source::Role(from) => {
                        for src in nets_of(policy, from, true) {
                            let _ = writeln!(text, "-A dfw -s {} {tail}", ip_text(&src));
                        }
                    }
                }
            }
        }
    }
    for net in protected_nets(policy, true) {
        let _ = writeln!(text, "-A dfw -d {} -j DROP", ip_text(&net));
    }
    text.push_str("COMMIT\n");
    Ok(text)
}

pub(crate) const DROP_PROGRAM: &str = "lab_drop";
pub(crate) const LOOKUP_PROGRAM: &str = "floor_lookup";

pub(crate) struct Filters {
    pub(crate) policy: Policy,
    pub(crate) compiled: director_fw::Compiled,
    /// The floors object: `lab_drop` and `floor_lookup`.
    pub(crate) floors: Ebpf,
    pub(crate) nft: String,
    pub(crate) iptables: String,
}

impl Filters {
    pub(crate) fn new(object: &[u8], policy_text: &str) -> Result<Filters> {
        let policy =
            Policy::from_toml("lab-bench-policy.toml", policy_text).map_err(|e| anyhow!("{e}"))?;
        let compiled = compile(&policy).map_err(|e| anyhow!("{e}"))?;
        let mut floors = EbpfLoader::new().load(object)?;
        for name in [DROP_PROGRAM, LOOKUP_PROGRAM] {
            let program: &mut Xdp = floors
                .program_mut(name)
                .with_context(|| format!("the floors object has no program {name}"))?
                .try_into()?;
            program.load()?;
        }
        Ok(Filters {
            nft: nft_ruleset(&policy)?,
            iptables: iptables_ruleset(&policy)?,
            policy,
            compiled,
            floors,
        })
    }

    pub(crate) fn install(&mut self, filter: Filter, bed: &Bed) -> Result<Installed<'_>> {
        let (gw, iface) = (bed.gw.clone(), bed.gw_in.clone());
        Ok(match filter {
            Filter::None => Installed::Nothing,
            Filter::XdpDrop | Filter::XdpLookupFloor => {
                let name = if filter == Filter::XdpDrop {
                    DROP_PROGRAM
                } else {
                    // The lookup hits, as director-fw's lookup of a protected host does.
                    let mut dsts: HashMap<_, u32, u32> = HashMap::try_from(
                        self.floors
                            .map_mut("DSTS")
                            .context("the floors have no DSTS")?,
                    )?;
                    dsts.insert(u32::from_ne_bytes(bed.director.octets()), 1, 0)?;
                    LOOKUP_PROGRAM
                };
                let program: &mut Xdp = self
                    .floors
                    .program_mut(name)
                    .with_context(|| format!("no {name}"))?
                    .try_into()?;
                let mut guard = XdpDropGuard {
                    program,
                    link: None,
                };
                let link = in_netns(&gw, || {
                    guard
                        .program
                        .attach(&iface, XdpMode::Driver)
                        .with_context(|| format!("attaching {name} to {iface}"))
                })?;
                guard.link = Some(link);
                Installed::Drop(guard)
            }
            Filter::DfwXdp | Filter::DfwTc => {
                let mode = if filter == Filter::DfwXdp {
                    AttachMode::Xdp
                } else {
                    AttachMode::Tc
                };
                let (policy, compiled) = (self.policy.clone(), self.compiled.clone());
                let (datapath, link) = in_netns(&gw, move || {
                    let mut datapath = Datapath::with_policy(
                        &compiled,
                        policy.options.flow_table_size,
                        mode.programs(),
                        false,
                    )?;
                    let (link, warning) = datapath.attach(&iface, mode)?;
                    if let Some(message) = warning {
                        bail!("director-fw did not attach as asked: {message}");
                    }
                    Ok((datapath, link))
                })?;
                Installed::Dfw(Box::new(datapath), link)
            }
            Filter::Nft => {
                let guard = NftGuard { ns: gw.clone() };
                run_in_netns(&gw, "nft", &["-f", "-"], Some(&self.nft))
                    .context("loading the nftables ruleset")?;
                Installed::Nft(guard)
            }
            Filter::Iptables => {
                let guard = IptablesGuard { ns: gw.clone() };
                run_in_netns(&gw, "iptables-legacy-restore", &[], Some(&self.iptables))
                    .context("loading the iptables rules")?;
                Installed::Iptables(guard)
            }
            Filter::XdpFilterAll | Filter::XdpFilterTcp => {
                // Checked again here: the guard removes the pins, which must then be ours.
                ensure!(
                    !Path::new(XDP_FILTER_PINS).exists(),
                    "{XDP_FILTER_PINS} exists: another xdp-filter is loaded on this machine"
                );
                let guard = XdpFilterGuard {
                    ns: gw.clone(),
                    iface: iface.clone(),
                    remove_libxdp_dir: !Path::new(LIBXDP_PINS).exists(),
                };
                run_in_netns(
                    &gw,
                    "xdp-filter",
                    &[
                        "load",
                        "--mode",
                        "native",
                        "--policy",
                        "allow",
                        "--features",
                        if filter == Filter::XdpFilterTcp {
                            "tcp"
                        } else {
                            "all"
                        },
                        &iface,
                    ],
                    None,
                )?;
                let port = DENY_PORT.to_string();
                run_in_netns(
                    &gw,
                    "xdp-filter",
                    &["port", "--mode", "dst", "--proto", "tcp", &port],
                    None,
                )?;
                Installed::XdpFilter(guard)
            }
        })
    }
}
