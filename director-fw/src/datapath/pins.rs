//! The instance's pins under bpffs, which keep the datapath enforcing when no agent runs:
//!
//! ```text
//! /sys/fs/bpf/director-fw/INSTANCE/
//!   maps/MAP                 every map (director_fw_common::maps::ALL)
//!   progs/PROGRAM@OBJECT     the attached program; OBJECT is the id of the object it came from
//!   links/MODE:IFACE         one BPF link per interface (MODE: xdp, xdp-generic or tc), or an
//!                            empty directory that marks the instance's netlink filter there
//!                            (TC mode on a kernel without TCX, see `filter`)
//! ```
//!
//! A link pin keeps its attachment alive after the agent exits, and the link keeps its
//! program and, through it, every map. A netlink filter needs no pin to stay; its marker
//! tells the next agent that it is the instance's. Map pins let a restarted agent write the live maps
//! (adoption); the program's pin names the object, so an agent can tell an upgrade.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData, MapType},
    programs::{links::PinnedLink, SchedClassifier, Xdp},
};
use director_fw_common::{
    events::{EVENTS_BYTES, EVENT_STATS_SLOTS},
    interfaces::{InterfaceRows, INTERFACE_COUNTERS},
    maps,
    verdict::COUNTER_SLOTS,
    Counter, FlowKey, FlowState, FragKey, FragState,
};

use crate::instance::Lock;

use super::{
    attach::{attach_tc, attach_xdp, interface_index, put_back, Attachment},
    filter, io,
    load::data,
    swap::{PolicyMaps, Snapshot},
    AttachMode, Counters, Datapath, DatapathError,
};

/// A pinned attachment: the interface it attaches to and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    pub mode: AttachMode,
    pub iface: String,
    pub path: PathBuf,
    pub hold: Hold,
}

/// What keeps an attachment on its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// A BPF link, pinned.
    Link,
    /// The instance's netlink filter, marked by a directory.
    Filter,
}

impl LinkPin {
    /// Whether the attachment still filters its interface. Only what the kernel reports as
    /// gone counts as dead: a link that cannot be read, or a filter dump that fails, is left
    /// alone.
    fn dead(&self) -> bool {
        match self.hold {
            Hold::Link => link_ifindex(&self.path) == Some(0),
            Hold::Filter => match filter::installed(&self.iface) {
                Ok(found) => found.is_none(),
                Err(err) => {
                    tracing::warn!(
                        "{}: could not read the interface's TC filters ({err}); taking the instance's filter to be there",
                        self.iface
                    );
                    false
                }
            },
        }
    }

    fn unpin(&self) -> Result<(), DatapathError> {
        match self.hold {
            Hold::Link => fs::remove_file(&self.path),
            Hold::Filter => fs::remove_dir(&self.path),
        }
        .map_err(io(self.path.display()))
    }
}

/// The live datapath, opened from its pins.
pub struct Adopted {
    pub policy: PolicyMaps,
    pub counters: Counters,
}

pub struct Pins {
    dir: PathBuf,
}

const ADVICE: &str = "It was left by a director-fw whose flow or counter layout differs. Run `director-fw detach --yes` (the gateway passes everything until the agent starts again), then start the agent.";

impl Pins {
    pub fn new(dir: PathBuf) -> Pins {
        Pins { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    fn progs_dir(&self) -> PathBuf {
        self.dir.join("progs")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    fn link(&self, mode: AttachMode, iface: &str) -> PathBuf {
        self.links_dir().join(format!("{}:{iface}", mode.name()))
    }

    /// The pinned links, by interface name.
    pub fn links(&self) -> Result<Vec<LinkPin>, DatapathError> {
        let dir = self.links_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io(dir.display())(err)),
        };
        let mut links = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed = name
                .split_once(':')
                .and_then(|(mode, iface)| Some((AttachMode::from_name(mode)?, iface)));
            // Not a pin of ours: left alone here, and `detach` removes it with the rest.
            let Some((mode, iface)) = parsed else {
                continue;
            };
            let marker = entry.file_type().is_ok_and(|t| t.is_dir());
            links.push(LinkPin {
                mode,
                iface: iface.to_string(),
                path: entry.path(),
                hold: if marker { Hold::Filter } else { Hold::Link },
            });
        }
        links.sort_by(|a, b| a.iface.cmp(&b.iface));
        Ok(links)
    }

    /// Removes the pins of attachments that no longer hold an interface: the kernel keeps a
    /// link whose interface was deleted, but it filters nothing, even when an interface of the
    /// same name comes back; a netlink filter goes with its interface (or its qdisc). Returns
    /// those interfaces, which need attaching again.
    pub fn prune_dead_links(&self) -> Result<Vec<String>, DatapathError> {
        let mut dead = Vec::new();
        for link in self.links()? {
            if link.dead() {
                link.unpin()?;
                dead.push(link.iface);
            }
        }
        Ok(dead)
    }

    /// Attaches the pinned program again to each of `ifaces` that exists but has no live
    /// link (an interface removed and created again, or one that appeared since the start),
    /// and pins the new links. Returns the interfaces it attached to, with any warning.
    pub fn heal(
        &self,
        ifaces: &[String],
        mode: AttachMode,
    ) -> Result<Vec<(String, Option<String>)>, DatapathError> {
        let pinned = self.links()?;
        let mut healed = Vec::new();
        for iface in ifaces {
            let now = interface_index(iface);
            if now == 0 {
                // Nothing to attach to until the interface exists.
                continue;
            }
            if let Some(link) = pinned.iter().find(|l| &l.iface == iface) {
                if !link.dead() {
                    continue;
                }
                link.unpin()?;
            }
            let program = self
                .program_path(mode.program())
                .ok_or(DatapathError::Missing(mode.program()))?;
            let (attachment, warning) = match mode {
                AttachMode::Xdp | AttachMode::XdpGeneric => {
                    let mut xdp =
                        Xdp::from_pin(&program, aya_obj::programs::XdpAttachType::Interface)?;
                    let (link, warning) = attach_xdp(&mut xdp, iface, mode)?;
                    (Attachment::Link(link), warning)
                }
                AttachMode::Tc => attach_tc(&mut SchedClassifier::from_pin(&program)?, iface)?,
            };
            self.pin_attachment(mode, iface, attachment)?;
            healed.push((iface.clone(), warning));
        }
        Ok(healed)
    }

    /// The id of the object whose program the links run, from the program's pin.
    pub fn object_id(&self) -> Option<String> {
        let entries = fs::read_dir(self.progs_dir()).ok()?;
        entries
            .filter_map(Result::ok)
            .find_map(|e| Some(e.file_name().to_str()?.split_once('@')?.1.to_string()))
    }

    /// The pin of the program `name`, whatever object it came from.
    pub fn program_path(&self, name: &str) -> Option<PathBuf> {
        let entries = fs::read_dir(self.progs_dir()).ok()?;
        entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split_once('@'))
                .is_some_and(|(program, _)| program == name)
        })
    }

    /// The policy the pinned maps hold in force, read back from the kernel (for tests).
    pub fn snapshot(&self) -> Result<Snapshot, DatapathError> {
        PolicyMaps::adopt(&mut |name| self.open(name))?.snapshot()
    }

    /// Flows tracked now, and the flow table's capacity. Counting walks the table's keys, a
    /// syscall each: a scrape's worth of work, not a per-packet one.
    pub fn flow_table(&self) -> Result<(u64, u64), DatapathError> {
        let map = self.open(maps::FLOWS)?;
        let capacity = data(&map)?.info()?.max_entries();
        let flows: aya::maps::HashMap<_, FlowKey, FlowState> = aya::maps::HashMap::try_from(&map)?;
        Ok((flows.keys().count() as u64, u64::from(capacity)))
    }

    /// Whether anything of the instance is pinned.
    pub fn exist(&self) -> bool {
        self.dir.exists()
    }

    /// Checks that the pinned flow, fragment and counter maps are what this agent's object
    /// declares, so that a new program can take them over. The kernel itself would accept a
    /// map of another size and then misread it.
    pub fn check_state_layout(&self) -> Result<(), DatapathError> {
        use std::mem::size_of;
        let expect = [
            (
                maps::FLOWS,
                MapType::LruHash,
                size_of::<FlowKey>(),
                size_of::<FlowState>(),
                None,
            ),
            (
                maps::FRAGS,
                MapType::LruHash,
                size_of::<FragKey>(),
                size_of::<FragState>(),
                None,
            ),
            (
                maps::COUNTERS,
                MapType::PerCpuArray,
                4,
                size_of::<Counter>(),
                Some(COUNTER_SLOTS),
            ),
            (
                maps::IFACE_COUNTERS,
                MapType::PerCpuArray,
                4,
                size_of::<Counter>(),
                Some(INTERFACE_COUNTERS),
            ),
            (
                maps::IFACE_ROWS,
                MapType::Array,
                4,
                size_of::<InterfaceRows>(),
                Some(1),
            ),
            (maps::EVENTS, MapType::RingBuf, 0, 0, Some(EVENTS_BYTES)),
            (maps::EVENT_BUDGET, MapType::PerCpuArray, 4, 4, Some(1)),
            (
                maps::EVENT_STATS,
                MapType::PerCpuArray,
                4,
                8,
                Some(EVENT_STATS_SLOTS),
            ),
        ];
        for (name, kind, key, value, entries) in expect {
            let path = self.map(name);
            // A map an older object did not have is created by the object that takes over.
            if !path.exists() && !matches!(name, maps::FLOWS | maps::FRAGS | maps::COUNTERS) {
                continue;
            }
            let info = MapData::from_pin(&path)?.info()?;
            let found_kind = info.map_type()?;
            let ok = found_kind == kind
                && info.key_size() as usize == key
                && info.value_size() as usize == value
                && entries.is_none_or(|n| info.max_entries() == n);
            if !ok {
                return Err(DatapathError::Layout {
                    path: path.display().to_string(),
                    found: format!(
                        "{found_kind:?}, key {} B, value {} B, {} entries",
                        info.key_size(),
                        info.value_size(),
                        info.max_entries()
                    ),
                    needs: format!(
                        "{kind:?}, key {key} B, value {value} B{}",
                        entries.map_or(String::new(), |n| format!(", {n} entries"))
                    ),
                    advice: ADVICE,
                });
            }
        }
        Ok(())
    }

    /// Opens the live policy and counter maps, when the pins are complete and come from the
    /// object `object_id`. Only the holder of the instance's lock may write live maps.
    pub fn adopt(&self, _held: &Lock, object_id: &str) -> Result<Option<Adopted>, DatapathError> {
        if self.object_id().as_deref() != Some(object_id) {
            return Ok(None);
        }
        if maps::ALL.iter().any(|name| !self.map(name).exists()) {
            return Ok(None);
        }
        let policy = PolicyMaps::adopt(&mut |name| self.open(name))?;
        Ok(Some(Adopted {
            policy,
            counters: Counters::open(&mut |name| self.open(name))?,
        }))
    }

    pub(super) fn open(&self, name: &'static str) -> Result<Map, DatapathError> {
        Ok(Map::from_map_data(MapData::from_pin(self.map(name))?)?)
    }

    /// Pins a newly loaded datapath and its new links. Called once every interface is
    /// attached, so that a failed start leaves no pins behind.
    pub fn commit(
        &self,
        datapath: &mut Datapath,
        links: Vec<(AttachMode, String, Attachment)>,
    ) -> Result<(), DatapathError> {
        for dir in [self.maps_dir(), self.links_dir(), self.progs_dir()] {
            fs::create_dir_all(&dir).map_err(io(dir.display()))?;
        }
        self.pin_maps(datapath)?;
        self.pin_links(links)
    }

    /// Pins new attachments of an adopted datapath.
    pub fn pin_links(
        &self,
        links: Vec<(AttachMode, String, Attachment)>,
    ) -> Result<(), DatapathError> {
        for (mode, iface, attachment) in links {
            self.pin_attachment(mode, &iface, attachment)?;
        }
        Ok(())
    }

    /// Makes an attachment outlive the agent. On an error it is dropped, which detaches it.
    fn pin_attachment(
        &self,
        mode: AttachMode,
        iface: &str,
        attachment: Attachment,
    ) -> Result<(), DatapathError> {
        let dir = self.links_dir();
        fs::create_dir_all(&dir).map_err(io(dir.display()))?;
        let path = self.link(mode, iface);
        match attachment {
            Attachment::Link(link) => {
                link.pin(path)?;
            }
            Attachment::Filter(link) => {
                fs::create_dir(&path).map_err(io(path.display()))?;
                filter::keep(link);
            }
        }
        Ok(())
    }

    /// Hands the pinned links to a new object: its program replaces the old one on each link,
    /// and its policy maps and program take the old pins' places. The state maps were shared.
    ///
    /// Links whose interface is gone are unpinned first. Once the links run the new program,
    /// what remains (repinning the maps and the program) cannot undo the hand-over: its
    /// failures come back as warnings, with the links.
    pub fn take_over(
        &self,
        datapath: &mut Datapath,
    ) -> Result<(Vec<LinkPin>, Vec<String>), DatapathError> {
        self.prune_dead_links()?;
        let links = self.links()?;
        // Every link opens before any changes hands, so that a bad one stops it early.
        for link in links.iter().filter(|l| l.hold == Hold::Link) {
            PinnedLink::from_pin(&link.path)?;
        }
        for (done, link) in links.iter().enumerate() {
            if let Err(err) = datapath.replace(link) {
                // Put the old program back where the new one went, so every interface runs
                // the policy the pins describe.
                for earlier in &links[..done] {
                    let back = self
                        .program_path(earlier.mode.program())
                        .ok_or(DatapathError::Missing(earlier.mode.program()))
                        .and_then(|program| put_back(&program, earlier));
                    if let Err(undo) = back {
                        tracing::error!("{}: could not put the old program back after a failed hand-over: {undo}", earlier.iface);
                    }
                }
                return Err(err);
            }
        }
        // From here on the links run the new program and its maps: repin them over the old.
        for name in maps::ALL.iter().filter(|n| !maps::STATE.contains(n)) {
            let _ = fs::remove_file(self.map(name));
        }
        if let Ok(entries) = fs::read_dir(self.progs_dir()) {
            for entry in entries.filter_map(Result::ok) {
                let _ = fs::remove_file(entry.path());
            }
        }
        let mut warnings = Vec::new();
        for dir in [self.maps_dir(), self.progs_dir()] {
            if let Err(err) = fs::create_dir_all(&dir) {
                warnings.push(format!("{}: {err}", dir.display()));
            }
        }
        if let Err(err) = self.pin_maps(datapath) {
            warnings.push(format!(
                "the new maps run, but pinning them failed ({err}); a restarted agent takes the datapath over again"
            ));
        }
        Ok((links, warnings))
    }

    fn pin_maps(&self, datapath: &mut Datapath) -> Result<(), DatapathError> {
        datapath.policy.pin(self)?;
        let state = &datapath.state;
        let events = state.events.iter().map(|(name, map)| (*name, map));
        for (name, map) in [(maps::FLOWS, &state.flows), (maps::FRAGS, &state.frags)]
            .into_iter()
            .chain(state.counters.maps())
            .chain(events)
        {
            if !self.map(name).exists() {
                data(map)?.pin(self.map(name))?;
            }
        }
        if let Some(map) = datapath.ebpf.map(maps::LAST_VERDICT) {
            if !self.map(maps::LAST_VERDICT).exists() {
                map.pin(self.map(maps::LAST_VERDICT))?;
            }
        }
        let id = datapath.object_id().to_string();
        for (name, program) in datapath.ebpf.programs_mut() {
            if program.fd().is_ok() {
                program.pin(self.progs_dir().join(format!("{name}@{id}")))?;
            }
        }
        Ok(())
    }
}

/// The interface a pinned XDP or TCX link holds (0 once the interface is gone), read with
/// `BPF_OBJ_GET_INFO_BY_FD`: aya's `LinkInfo` does not carry it.
fn link_ifindex(path: &Path) -> Option<u32> {
    use std::os::fd::{FromRawFd, OwnedFd};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags, path_fd.
    let mut attr = [0u64; 3];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: the attr is valid for its size and the path outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new fd that the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // bpf_link_info: type, id, prog_id, then the union (8-aligned) whose XDP and TCX members
    // start with the ifindex.
    let mut info = [0u32; 16];
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoByFd {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the attr and the info buffer are valid for their sizes during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoByFd,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    (rc == 0).then_some(info[4])
}

/// Removes the instance's links, which detaches its programs from every interface, and then
/// every pin. This is the explicit fail-open: afterwards the interfaces pass everything.
/// Returns the interfaces it detached from.
pub fn detach(pins: &Pins) -> Result<Vec<String>, DatapathError> {
    let links = pins.links()?;
    for link in &links {
        match link.hold {
            Hold::Link => match PinnedLink::from_pin(&link.path) {
                // Unpinning drops the last reference the instance holds: the link detaches.
                Ok(pinned) => drop(pinned.unpin().map_err(io(link.path.display()))?),
                Err(_) => link.unpin()?,
            },
            Hold::Filter => {
                filter::remove(&link.iface)?;
                link.unpin()?;
            }
        }
    }
    if pins.dir.exists() {
        fs::remove_dir_all(&pins.dir).map_err(io(pins.dir.display()))?;
    }
    Ok(links.into_iter().map(|l| l.iface).collect())
}
