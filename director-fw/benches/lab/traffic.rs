//! The traffic: the generator's configuration, the helper programs, and one measurement.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Mix {
    Deny,
    Allow,
    Mixed,
}

impl Mix {
    pub(crate) const ALL: [Mix; 3] = [Mix::Deny, Mix::Allow, Mix::Mixed];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Mix::Deny => "deny",
            Mix::Allow => "allow",
            Mix::Mixed => "mix",
        }
    }

    /// Denied packets per 256.
    pub(crate) fn deny_share(self) -> u32 {
        match self {
            Mix::Deny => 256,
            Mix::Allow => 0,
            Mix::Mixed => 128,
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Mix::Deny => "all denied: 198.18.96.0/20 (no role) x 16 ports -> director tcp/22 SYN",
            Mix::Allow => "all allowed: 198.18.16.0/20 (internal-clients) x 4 ports -> director tcp/443 ACK, 16,384 flows",
            Mix::Mixed => "half denied, half allowed, alternating",
        }
    }
}

// The generator's configuration, byte for byte as in bench-floors-ebpf/src/lab.rs

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct GenKind {
    pub(crate) base: u32,
    pub(crate) hosts_log2: u32,
    pub(crate) ports_log2: u32,
    pub(crate) dport: u16,
    pub(crate) flags: u8,
    pub(crate) _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct GenConfig {
    pub(crate) dst_mac: [u8; 6],
    pub(crate) src_mac: [u8; 6],
    pub(crate) deny_share: u32,
    pub(crate) dst: u32,
    pub(crate) allow: GenKind,
    pub(crate) deny: GenKind,
}

const _: () = assert!(std::mem::size_of::<GenConfig>() == 52);

// SAFETY: plain data with explicit padding fields, no implicit padding (size asserted).
unsafe impl Pod for GenConfig {}

pub(crate) fn floors_object() -> Result<Vec<u8>> {
    let path = PathBuf::from(std::env::var_os("DIRECTOR_FW_FLOORS_OBJ").context(
        "DIRECTOR_FW_FLOORS_OBJ is not set: it names the bench-floors-ebpf object, which \
         `cargo xtask bench` builds and passes",
    )?);
    fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// The source and the sink share one object instance (the sink reads the ports from the
/// source's configuration).
pub(crate) struct Traffic {
    pub(crate) ebpf: Ebpf,
}

impl Traffic {
    pub(crate) fn load(object: &[u8]) -> Result<Traffic> {
        let mut ebpf = EbpfLoader::new().load(object)?;
        for name in ["lab_gen", "lab_sink"] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("the floors object has no program {name}"))?
                .try_into()?;
            program.load()?;
        }
        Ok(Traffic { ebpf })
    }

    pub(crate) fn program(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    pub(crate) fn attach_sink(&mut self, bed: &mut Bed) -> Result<()> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut("lab_sink")
            .context("no program lab_sink")?
            .try_into()?;
        let iface = bed.sink_iface.clone();
        let link = in_netns(&bed.sink_ns, || {
            program
                .attach(&iface, XdpMode::Driver)
                .with_context(|| format!("attaching the sink to {iface}"))
        })?;
        bed.sink_link = Some(link);
        Ok(())
    }

    pub(crate) fn detach_sink(&mut self, bed: &mut Bed) {
        if let Some(link) = bed.sink_link.take() {
            if let Some(Ok(program)) = self.ebpf.program_mut("lab_sink").map(<&mut Xdp>::try_from) {
                let _ = program.detach(link);
            }
        }
    }

    pub(crate) fn configure(&mut self, config: GenConfig) -> Result<()> {
        let mut array: Array<_, GenConfig> =
            Array::try_from(self.ebpf.map_mut("GEN_CONFIG").context("no GEN_CONFIG")?)?;
        array.set(0, config, 0)?;
        Ok(())
    }

    pub(crate) fn per_cpu_sum(&self, map: &str, slot: u32) -> Result<u64> {
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(map).with_context(|| format!("no {map}"))?)?;
        Ok(array.get(&slot, 0)?.iter().sum())
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) secs: f64,
    /// Frames the source made, per second.
    pub(crate) sent: f64,
    /// Frames the gateway's ingress veth received.
    pub(crate) received: f64,
    /// Frames lost at the gateway's ingress veth (its ring full).
    pub(crate) rx_dropped: f64,
    /// Frames at the sink: all, to the allowed port, to the denied port.
    pub(crate) forwarded: f64,
    pub(crate) fwd_allowed: f64,
    pub(crate) fwd_denied: f64,
}

impl Sample {
    pub(crate) fn dropped(&self) -> f64 {
        (self.received - self.forwarded).max(0.0)
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Snapshot {
    pub(crate) at: Instant,
    pub(crate) made: u64,
    pub(crate) rx: u64,
    pub(crate) rx_dropped: u64,
    pub(crate) sink: [u64; 3],
}

pub(crate) fn snapshot(traffic: &Traffic, bed: &Bed) -> Result<Snapshot> {
    let before = Instant::now();
    let link = link_info(&bed.gw, &bed.gw_in)?;
    let after = Instant::now();
    Ok(Snapshot {
        at: before + (after - before) / 2,
        made: traffic.per_cpu_sum("GEN_COUNT", 1)? + traffic.per_cpu_sum("GEN_COUNT", 2)?,
        rx: link.rx_packets,
        rx_dropped: link.rx_dropped,
        sink: [
            traffic.per_cpu_sum("SINK_COUNT", 0)?,
            traffic.per_cpu_sum("SINK_COUNT", 1)?,
            traffic.per_cpu_sum("SINK_COUNT", 2)?,
        ],
    })
}

/// One generator thread, in the source's namespace: live-frames runs of `lab_gen` on the
/// source veth until `stop`.
pub(crate) fn generate(
    program: &Xdp,
    bed: &Bed,
    cpu: usize,
    stop: &AtomicBool,
    end: Instant,
) -> Result<()> {
    shared::pin_thread(cpu)?;
    let frame = [0u8; FRAME_LEN];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    let md: Vec<u8> = [0, FRAME_LEN as u32, 0, bed.src_ifindex, 0, 0]
        .iter()
        .flat_map(|w: &u32| w.to_ne_bytes())
        .collect();
    let mut repeat: u32 = 20_000;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let mut options = TestRunOptions::new();
        options.data_in = Some(&frame);
        options.ctx_in = Some(&md);
        options.repeat = repeat;
        options.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
        let started = Instant::now();
        // Live frames report no return value; the sample checks that frames arrived.
        program
            .test_run(options)
            .with_context(|| format!("BPF_PROG_RUN (live frames) on {}", bed.src_iface))?;
        let took = started.elapsed().as_secs_f64().max(1e-4);
        let next = f64::from(repeat) * CALL_TARGET.as_secs_f64() / took;
        repeat = next.clamp(10_000.0, 20_000_000.0) as u32;
    }
    Ok(())
}

pub(crate) fn measure(
    traffic: &mut Traffic,
    bed: &Bed,
    mix: Mix,
    cpu: usize,
    warmup: Duration,
    window: Duration,
) -> Result<Sample> {
    check_interrupted()?;
    traffic.configure(bed.gen_config(mix))?;
    let traffic = &*traffic;
    let program = traffic.program("lab_gen")?;
    let stop = AtomicBool::new(false);
    // Bounds the generator even if this thread never gets to set `stop`.
    let end = Instant::now() + warmup + window + Duration::from_secs(5);
    thread::scope(|scope| -> Result<Sample> {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| in_netns(&bed.src_ns, || generate(program, bed, cpu, &stop, end)))
            })
            .collect();
        let result = (|| -> Result<Sample> {
            thread::sleep(warmup);
            let a = snapshot(traffic, bed)?;
            let deadline = a.at + window;
            while Instant::now() < deadline {
                check_interrupted()?;
                ensure!(
                    !threads.iter().any(|t| t.is_finished()),
                    "a generator thread stopped early"
                );
                thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
            }
            let b = snapshot(traffic, bed)?;
            ensure!(
                b.made > a.made && b.rx > a.rx,
                "no traffic: the source made {} frames and the gateway received {}",
                b.made - a.made,
                b.rx.saturating_sub(a.rx)
            );
            let secs = (b.at - a.at).as_secs_f64();
            let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
            let sink_all = |s: &Snapshot| s.sink.iter().sum::<u64>();
            Ok(Sample {
                secs,
                sent: rate(a.made, b.made),
                received: rate(a.rx, b.rx),
                rx_dropped: rate(a.rx_dropped, b.rx_dropped),
                forwarded: rate(sink_all(&a), sink_all(&b)),
                fwd_allowed: rate(a.sink[0], b.sink[0]),
                fwd_denied: rate(a.sink[1], b.sink[1]),
            })
        })();
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join()
                .map_err(|_| anyhow!("a generator thread panicked"))??;
        }
        result
    })
}
