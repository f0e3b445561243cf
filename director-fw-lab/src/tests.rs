//! Unit tests. The ones that build a lab need root: without it they fail when `CI=true` and
//! are skipped (with a notice) otherwise.

use super::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Port used by the exchanges (SIP over TLS, as the Director would see it).
const PORT: u16 = 5061;
const OK_TIMEOUT: Duration = Duration::from_secs(2);
const DROP_TIMEOUT: Duration = Duration::from_millis(300);

/// True when the test may build namespaces; panics on CI without root.
fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root to build network namespaces, and CI=true");
    }
    eprintln!("SKIPPED {test}: needs root to build network namespaces");
    false
}

fn our_netns(prefix: &str) -> Vec<String> {
    ip(&["netns", "list"])
        .expect("ip netns list")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// `/proc/sys/net/<key>` for each key, read inside `ns`.
fn sysctls_in(ns: &str, keys: &[String]) -> Vec<String> {
    in_netns(ns, || {
        keys.iter()
            .map(|k| {
                Ok(std::fs::read_to_string(format!("/proc/sys/net/{k}"))?
                    .trim()
                    .to_owned())
            })
            .collect()
    })
    .unwrap_or_else(|e| panic!("reading sysctls in {ns}: {e:#}"))
}

fn read_root_sysctl(key: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/net/{key}"))
        .expect("read sysctl")
        .trim()
        .to_owned()
}

#[test]
fn address_plan() {
    let names: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(
        names,
        [
            "reverse-proxy",
            "director",
            "front-end",
            "internal-clients",
            "edge-internal",
            "outsider"
        ]
    );
    for (i, role) in Role::ALL.iter().enumerate() {
        assert_eq!(usize::from(role.segment()), i + 1);
        let h = host_plan("dfw00000-", *role).unwrap();
        assert_eq!(h.v4.to_string(), format!("198.18.{}.10", i + 1));
        assert_eq!(h.gw_v4.to_string(), format!("198.18.{}.1", i + 1));
        assert_eq!(h.v6.to_string(), format!("2001:db8:{}::10", i + 1));
        assert_eq!(h.gw_v6.to_string(), format!("2001:db8:{}::1", i + 1));
        assert_eq!(h.ns, format!("dfw00000-{}", role.name()));
    }
    // The longest prefix pick_prefix can produce still fits IFNAMSIZ.
    assert!(host_plan("dfw9999999-", Role::Outsider).is_ok());
    assert!(host_plan("dfw99999999999-", Role::Outsider).is_err());

    assert!(is_lab_addr("198.18.0.0".parse().unwrap()));
    assert!(is_lab_addr("198.19.255.255".parse().unwrap()));
    assert!(!is_lab_addr("198.20.0.1".parse().unwrap()));
    assert!(!is_lab_addr("192.0.2.1".parse().unwrap()));
    assert!(is_lab_addr("2001:db8:ffff::1".parse().unwrap()));
    assert!(!is_lab_addr("2001:db9::1".parse().unwrap()));
}

#[test]
fn peers_toml_names_roles_but_not_outsider() {
    // A lab value that owns no namespaces: dropping it deletes nothing.
    let lab = Lab {
        prefix: "dfw00000-".into(),
        gateway: "dfw00000-gw".into(),
        hosts: Role::ALL
            .iter()
            .map(|r| host_plan("dfw00000-", *r).unwrap())
            .collect(),
        created: Vec::new(),
    };
    let toml = lab.peers_toml();
    assert!(toml.starts_with("[peers]\n"), "{toml}");
    assert!(toml.contains("director         = [\"198.18.2.10\", \"2001:db8:2::10\"]\n"));
    assert!(toml.contains("internal-clients = [\"198.18.4.10\", \"2001:db8:4::10\"]\n"));
    assert!(!toml.contains("outsider"), "{toml}");
    assert!(!toml.contains("198.18.6."), "{toml}");
    assert_eq!(toml.lines().count(), 6);
    assert_eq!(lab.host(Role::FrontEnd).role, Role::FrontEnd);
    assert_eq!(lab.gateway_ifaces().len(), 6);
    assert_eq!(
        lab.gateway_netns_path(),
        PathBuf::from("/run/netns/dfw00000-gw")
    );
}

#[test]
fn every_host_reaches_every_other_host() {
    if !have_root("every_host_reaches_every_other_host") {
        return;
    }
    let started = Instant::now();
    let lab = Lab::new().expect("build lab");
    eprintln!("lab {} built in {:?}", lab.prefix(), started.elapsed());
    let mut failures = Vec::new();
    for from in lab.hosts() {
        for to in lab.hosts().iter().filter(|h| h.role != from.role) {
            for ipv6 in [false, true] {
                let fam = if ipv6 { "v6" } else { "v4" };
                let tcp = tcp_exchange(from, to, PORT, ipv6, OK_TIMEOUT);
                if !matches!(tcp, Ok(true)) {
                    failures.push(format!("tcp {fam} {} -> {}: {tcp:?}", from.role, to.role));
                }
                let udp = udp_exchange(from, to, PORT, ipv6, OK_TIMEOUT);
                if !matches!(udp, Ok(true)) {
                    failures.push(format!("udp {fam} {} -> {}: {udp:?}", from.role, to.role));
                }
            }
        }
    }
    eprintln!("120 exchanges done after {:?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "failed exchanges:\n{}",
        failures.join("\n")
    );
}

#[test]
fn dropped_packets_report_false() {
    if !have_root("dropped_packets_report_false") {
        return;
    }
    let lab = Lab::new().expect("build lab");
    let (client, server) = (lab.host(Role::Outsider), lab.host(Role::Director));
    // Make the gateway silently discard traffic to the director, as a filter would.
    let (d4, d6) = (format!("{}/32", server.v4), format!("{}/128", server.v6));
    ip_ns(lab.gateway_ns(), &["route", "add", "blackhole", &d4]).unwrap();
    ip_ns(lab.gateway_ns(), &["-6", "route", "add", "blackhole", &d6]).unwrap();
    for ipv6 in [false, true] {
        let t = Instant::now();
        assert!(!tcp_exchange(client, server, PORT, ipv6, DROP_TIMEOUT).unwrap());
        assert!(!udp_exchange(client, server, PORT, ipv6, DROP_TIMEOUT).unwrap());
        assert!(t.elapsed() < DROP_TIMEOUT * 4, "took {:?}", t.elapsed());
        // The other direction's SYN gets through, but the SYN-ACK does not.
        assert!(!tcp_exchange(server, client, PORT, ipv6, DROP_TIMEOUT).unwrap());
        // A datagram that arrives and whose reply is lost is no block: it is an error.
        let half = udp_exchange(server, client, PORT, ipv6, DROP_TIMEOUT);
        assert!(
            format!("{:#}", half.unwrap_err()).contains("the request arrived"),
            "ipv6={ipv6}"
        );
    }
    // Other paths are unaffected.
    let fe = lab.host(Role::FrontEnd);
    assert!(tcp_exchange(client, fe, PORT, false, OK_TIMEOUT).unwrap());
    assert!(udp_exchange(client, fe, PORT, true, OK_TIMEOUT).unwrap());
}

#[test]
fn namespaces_helpers_and_drop() {
    if !have_root("namespaces_helpers_and_drop") {
        return;
    }
    let root_v4 = read_root_sysctl("ipv4/ip_forward");
    let root_v6 = read_root_sysctl("ipv6/conf/all/forwarding");
    let root_dad = read_root_sysctl("ipv6/conf/default/accept_dad");

    let lab = Lab::new().expect("build lab");
    let prefix = lab.prefix().to_owned();
    let mut listed = our_netns(&prefix);
    listed.sort();
    let mut expected: Vec<String> = lab.hosts().iter().map(|h| h.ns.clone()).collect();
    expected.push(lab.gateway_ns().to_owned());
    expected.sort();
    assert_eq!(listed, expected);
    assert!(lab.gateway_netns_path().exists());

    // Every namespace has the lab's own settings, on every link, whatever the root's are: the
    // gateway forwards, the hosts do not, IPv6 is on and DAD off.
    let expect = |ns: &str, ifaces: &[&str], forwarding: &str| {
        let mut want = vec![("ipv4/ip_forward".to_owned(), forwarding)];
        for conf in ["all", "default", "lo"].iter().chain(ifaces) {
            want.push((format!("ipv4/conf/{conf}/forwarding"), forwarding));
            want.push((format!("ipv6/conf/{conf}/forwarding"), forwarding));
            want.push((format!("ipv6/conf/{conf}/disable_ipv6"), "0"));
        }
        for conf in ["all", "default"].iter().chain(ifaces) {
            want.push((format!("ipv6/conf/{conf}/accept_dad"), "0"));
        }
        let keys: Vec<String> = want.iter().map(|(k, _)| k.clone()).collect();
        let got = sysctls_in(ns, &keys);
        let got: Vec<(String, &str)> = keys
            .into_iter()
            .zip(got.iter().map(String::as_str))
            .collect();
        assert_eq!(got, want, "sysctls in {ns}");
    };
    let gw_ifaces = lab.gateway_ifaces();
    let gw_ifaces: Vec<&str> = gw_ifaces.iter().map(String::as_str).collect();
    expect(lab.gateway_ns(), &gw_ifaces, "1");
    for host in lab.hosts() {
        expect(&host.ns, &[&host.iface], "0");
    }
    // ... and the root namespace's settings are untouched.
    assert_eq!(read_root_sysctl("ipv4/ip_forward"), root_v4);
    assert_eq!(read_root_sysctl("ipv6/conf/all/forwarding"), root_v6);
    assert_eq!(read_root_sysctl("ipv6/conf/default/accept_dad"), root_dad);

    // The gateway holds exactly lo and the six gateway-side veths, all at MTU 1500.
    let links = ip_ns(lab.gateway_ns(), &["-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 7, "{links}");
    for iface in lab.gateway_ifaces() {
        let line = links.lines().find(|l| l.contains(&format!(" {iface}@")));
        let line = line.unwrap_or_else(|| panic!("{iface} missing in {links}"));
        assert!(line.contains("mtu 1500"), "{line}");
    }

    // A panic inside in_netns comes back as an error.
    let err = in_netns(lab.gateway_ns(), || -> Result<()> { panic!("boom") }).unwrap_err();
    assert!(format!("{err:#}").contains("boom"), "{err:#}");
    assert!(in_netns("dfw-no-such-netns", || Ok(())).is_err());

    // Commands entered with nsenter see the host's addresses and the shared /sys.
    let director = lab.host(Role::Director);
    let out = netns_command(&director.ns, Path::new("ip"))
        .unwrap()
        .args(["-o", "addr", "show", "dev", &director.iface])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("198.18.2.10/24") && text.contains("2001:db8:2::10/64"),
        "{text}"
    );
    let root_sys = std::fs::metadata("/sys").unwrap();
    let script = format!(
        "test \"$(stat -c %d:%i /sys)\" = \"{}:{}\"",
        root_sys.dev(),
        root_sys.ino()
    );
    let mut child = spawn_in_netns(&director.ns, Path::new("sh"), &["-c", &script]).unwrap();
    assert!(
        child.wait().unwrap().success(),
        "nsenter child sees another /sys"
    );
    assert!(spawn_in_netns("dfw-no-such-netns", Path::new("true"), &[]).is_err());

    // Bounded commands in a namespace, with and without input.
    let out = run_in_netns(&director.ns, "ip", &["-o", "addr", "show"], None).unwrap();
    assert!(out.contains("198.18.2.10/24"), "{out}");
    let out = run_in_netns(&director.ns, "cat", &[], Some("to cat\n")).unwrap();
    assert_eq!(out, "to cat\n");
    let err = run_in_netns(
        &director.ns,
        "ip",
        &["link", "show", "dev", "nonesuch"],
        None,
    );
    let err = format!("{:#}", err.unwrap_err());
    assert!(
        err.contains(&director.ns) && err.contains("nonesuch"),
        "{err}"
    );

    // A link as `ip` shows it.
    let link = link_info(&director.ns, &director.iface).unwrap();
    let shown = ip_ns(
        &director.ns,
        &["-o", "link", "show", "dev", &director.iface],
    )
    .unwrap();
    let mac: Vec<String> = link.mac.iter().map(|b| format!("{b:02x}")).collect();
    assert!(shown.starts_with(&format!("{}: ", link.ifindex)), "{shown}");
    assert!(
        shown.contains(&format!("link/ether {} ", mac.join(":"))),
        "{shown}"
    );
    assert!(link_info(&director.ns, "nonesuch").is_err());

    // The closure of in_netns may borrow, and sysctls go to the namespace named.
    let mut seen = Vec::new();
    in_netns(&director.ns, || {
        seen.push(std::fs::read_to_string(
            "/proc/sys/net/ipv4/conf/all/rp_filter",
        )?);
        Ok(())
    })
    .unwrap();
    let rp = format!("ipv4/conf/{}/rp_filter", director.iface);
    write_sysctls(&director.ns, &[(&rp, "2")]).unwrap();
    assert_eq!(sysctls_in(&director.ns, &[rp]), ["2"]);
    assert_eq!(seen.len(), 1);

    drop(lab);
    assert!(
        our_netns(&prefix).is_empty(),
        "left over: {:?}",
        our_netns(&prefix)
    );
}

#[test]
fn drop_deletes_only_what_was_created() {
    if !have_root("drop_deletes_only_what_was_created") {
        return;
    }
    // What Lab::new leaves behind after a partial failure: some namespaces, no hosts.
    let prefix = pick_prefix().unwrap();
    let mut partial = Lab {
        gateway: format!("{prefix}gw"),
        prefix: prefix.clone(),
        hosts: Vec::new(),
        created: Vec::new(),
    };
    partial.add_netns(&format!("{prefix}gw")).unwrap();
    partial.add_netns(&format!("{prefix}director")).unwrap();
    // A second add of an existing name fails and is not recorded as ours.
    assert!(partial.add_netns(&format!("{prefix}gw")).is_err());
    assert_eq!(partial.created.len(), 2);
    assert_eq!(our_netns(&prefix).len(), 2);
    drop(partial);
    assert!(our_netns(&prefix).is_empty());
}

#[test]
fn write_sysctls_keeps_to_proc_sys_net() {
    for key in [
        "../../kernel/hostname",
        "/ipv4/ip_forward",
        "ipv4//ip_forward",
        "ipv4/./x",
        "",
    ] {
        let err = write_sysctls("dfw-no-such-netns", &[(key, "1")]).unwrap_err();
        assert!(
            format!("{err}").contains("is not a sysctl key"),
            "{key}: {err:#}"
        );
    }
}

/// `sh -c SCRIPT` through the runner the lab's commands use.
fn sh(script: &str, input: Option<&str>, timeout: Duration) -> Result<String> {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    netns::run_bounded(cmd, &format!("sh -c {script:?}"), input, timeout)
}

#[test]
fn bounded_commands() {
    let limit = Duration::from_secs(10);
    // Much output, and much input to a command that writes as it reads: neither blocks.
    let out = sh("head -c 300000 /dev/zero | tr '\\0' x", None, limit).unwrap();
    assert_eq!(out.len(), 300_000);
    assert!(out.bytes().all(|b| b == b'x'));
    let input = "0123456789abcdef\n".repeat(20_000);
    assert_eq!(sh("cat", Some(&input), limit).unwrap(), input);

    // The child leads a process group of its own.
    let out = sh("echo $$ $(cut -d' ' -f5 /proc/$$/stat)", None, limit).unwrap();
    let ids: Vec<&str> = out.split_whitespace().collect();
    assert!(ids.len() == 2 && ids[0] == ids[1], "pid and pgid: {out}");

    // A failure names the command and quotes its stderr.
    let err = format!(
        "{:#}",
        sh("echo oops >&2; exit 3", None, limit).unwrap_err()
    );
    assert!(
        err.contains("oops") && err.contains("exit status: 3"),
        "{err}"
    );
    let err = netns::run_bounded(Command::new("dfw-no-such-program"), "x", None, limit);
    assert!(format!("{:#}", err.unwrap_err()).contains("installed?"));

    // Too long: stopped in time, with what it started in the background.
    let file = std::env::temp_dir().join(format!("dfw-lab-bounded-{}", std::process::id()));
    let script = format!("sleep 30 & echo $! > {}; wait", file.display());
    let started = Instant::now();
    let err = sh(&script, None, Duration::from_millis(300)).unwrap_err();
    assert!(format!("{err}").contains("took longer"), "{err:#}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let pid = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    let stat = format!("/proc/{}/stat", pid.trim());
    let gone = (0..100).any(|_| {
        let state = std::fs::read_to_string(&stat).ok();
        let gone = state.is_none_or(|s| s.contains(") Z "));
        thread::sleep(Duration::from_millis(20));
        gone
    });
    assert!(gone, "background sleep {} survived", pid.trim());
}

#[test]
fn interrupt_guard_catches_and_restores() {
    for signal in INTERRUPT_SIGNALS {
        // SAFETY: reads the current action only.
        let before = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(signal, std::ptr::null(), &mut old), 0);
            old.sa_sigaction
        };
        let guard = InterruptGuard::install().unwrap();
        assert!(!interrupted());
        check_interrupted().unwrap();
        // SAFETY: the guard's handler only sets a flag.
        assert_eq!(unsafe { libc::raise(signal) }, 0);
        assert!(interrupted(), "signal {signal}");
        assert!(format!("{}", check_interrupted().unwrap_err()).contains("interrupted"));
        drop(guard);
        // SAFETY: reads the current action only.
        let after = unsafe {
            let mut now: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(signal, std::ptr::null(), &mut now), 0);
            now.sa_sigaction
        };
        assert_eq!(after, before, "signal {signal}: handler not restored");
    }
    // A new guard starts with the flag clear.
    let guard = InterruptGuard::install().unwrap();
    assert!(!interrupted());
    drop(guard);
}
