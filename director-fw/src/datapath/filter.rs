//! TC mode on a kernel without TCX (before 6.6, unless backported): a direct-action `cls_bpf`
//! filter on the interface's `clsact` qdisc, over netlink.
//!
//! Such a filter is not a BPF link, so nothing can be pinned for it, but it holds its program
//! (and, through it, every map) for as long as it is on the interface: it outlives the agent
//! as a pinned link does. The instance's one filter per interface sits at a fixed priority and
//! handle, so that any agent finds it again, replaces its program in one step (`cls_bpf`
//! swaps the program of an existing filter under RCU, as `BPF_LINK_UPDATE` does for a link)
//! and removes it on `detach`. Priority 1: no filter of a later priority runs before it.

use std::io;

use aya::programs::{
    links::Link,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    ProgramError, SchedClassifier, TcAttachType,
};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    tc::{TcAttribute, TcFilterBpf, TcFilterBpfOption, TcHandle as NlHandle, TcMessage, TcOption},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::attach::interface_index;

/// The filter's priority: the first on the ingress hook.
pub const PRIORITY: u16 = 1;
/// The filter's handle at that priority; another program's filter may share the priority.
pub const HANDLE: u32 = 0xd1f;

/// tcm_info of the instance's filter: the priority above the protocol (ETH_P_ALL, in network
/// order), as aya attaches it.
fn tcm_info() -> u32 {
    (u32::from(PRIORITY) << 16) | u32::from((libc::ETH_P_ALL as u16).to_be())
}

fn handle() -> TcHandle {
    TcHandle::new((HANDLE >> 16) as u16, HANDLE as u16)
}

/// Attaches `tc` to the ingress of `iface` as the instance's filter, creating the `clsact`
/// qdisc if the interface has none. Dropping the returned link removes the filter.
///
/// A filter of a director-fw program already at the place (one whose marker was lost: an
/// agent killed between attaching and marking, say) is taken over in one step, as an upgrade
/// would, rather than refused: it enforces, and only `tc filter del` could clear the way.
pub(super) fn attach(
    tc: &mut SchedClassifier,
    iface: &str,
) -> Result<SchedClassifierLink, ProgramError> {
    match tc::qdisc_add_clsact(iface) {
        Err(TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => {}
        other => other?,
    }
    let options = TcAttachOptions::Netlink(NlOptions {
        priority: PRIORITY,
        handle: handle(),
        ..NlOptions::default()
    });
    let id = match tc.attach_with_options(iface, TcAttachType::Ingress, options) {
        Err(err) if exists_error(&err) && ours(iface) => swap(tc, iface)?,
        other => other?,
    };
    tc.take_link(id)
}

/// Whether the filter at the instance's place on `iface` runs a director-fw TC program.
fn ours(iface: &str) -> bool {
    matches!(installed(iface), Ok(Some(filter)) if filter.name == director_fw_common::maps::TC_PROGRAM)
}

/// Whether attaching failed because a filter is already at the instance's priority and handle.
pub(super) fn exists_error(err: &ProgramError) -> bool {
    matches!(err, ProgramError::TcError(TcError::NetlinkError(err))
        if err.raw_os_error() == Some(libc::EEXIST))
}

/// Keeps a filter on its interface after the agent lets go of it (aya removes a filter whose
/// link is dropped).
pub(super) fn keep(link: SchedClassifierLink) {
    std::mem::forget(link);
}

/// The instance's filter on `iface`, as aya names an existing one.
fn existing(iface: &str) -> Result<SchedClassifierLink, io::Error> {
    SchedClassifierLink::attached(iface, TcAttachType::Ingress, PRIORITY, handle(), None)
}

/// Puts `tc` in place of the program of the instance's filter on `iface`, in one step, and
/// leaves the filter there.
pub(super) fn replace(tc: &mut SchedClassifier, iface: &str) -> Result<(), ProgramError> {
    let id = swap(tc, iface)?;
    keep(tc.take_link(id)?);
    Ok(())
}

/// Puts `tc` in place of the program of the instance's filter on `iface`; the filter is then
/// `tc`'s link.
fn swap(
    tc: &mut SchedClassifier,
    iface: &str,
) -> Result<aya::programs::tc::SchedClassifierLinkId, ProgramError> {
    // aya drops, and so removes, the filter it was handed when the program has no fd: ask first.
    tc.fd()?;
    let link = existing(iface).map_err(|err| ProgramError::from(TcError::IoError(err)))?;
    tc.attach_to_link(link)
}

/// Removes the instance's filter from `iface`, if it is there.
pub(super) fn remove(iface: &str) -> Result<(), ProgramError> {
    if installed(iface).map_err(TcError::IoError)?.is_none() {
        return Ok(());
    }
    existing(iface)
        .map_err(|err| ProgramError::from(TcError::IoError(err)))?
        .detach()
}

/// The BPF filter at the instance's place on an interface.
pub(super) struct Installed {
    /// The id of the program it runs.
    pub program: u32,
    /// The program's name.
    pub name: String,
}

/// The filter at the instance's place on `iface`, or `None` when the interface or the filter
/// is gone (a recreated interface, or `tc qdisc del`).
pub(super) fn installed(iface: &str) -> Result<Option<Installed>, io::Error> {
    let ifindex = interface_index(iface);
    if ifindex == 0 {
        return Ok(None);
    }
    let mut request = TcMessage::with_index(ifindex as i32);
    request.header.parent = NlHandle {
        major: NlHandle::CLSACT.major,
        minor: NlHandle::MIN_INGRESS,
    };
    // The kernel dumps only the filters of the instance's priority and protocol.
    let info = tcm_info();
    request.header.info = info;
    for message in dump(RouteNetlinkMessage::GetTrafficFilter(request))? {
        let RouteNetlinkMessage::NewTrafficFilter(filter) = message else {
            continue;
        };
        let ours = filter.header.info == info
            && u32::from(filter.header.handle) == HANDLE
            && filter
                .attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(kind) if kind == TcFilterBpf::KIND));
        if !ours {
            continue;
        }
        let options = filter.attributes.iter().find_map(|a| match a {
            TcAttribute::Options(options) => Some(options.as_slice()),
            _ => None,
        });
        let mut found = Installed {
            program: 0,
            name: String::new(),
        };
        for option in options.unwrap_or_default() {
            match option {
                TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => found.program = *id,
                TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => found.name = name.clone(),
                _ => {}
            }
        }
        return Ok(Some(found));
    }
    Ok(None)
}

/// Sends a dump request and collects the answer's messages.
fn dump(request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, io::Error> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut messages = Vec::new();
    let mut received = vec![0; 64 * 1024];
    // An interface holds a handful of filters; the bound only stops a kernel that never ends.
    for _ in 0..1024 {
        let size = socket.recv(&mut &mut received[..], 0)?;
        let mut at = 0;
        while at + 4 <= size {
            let length = u32::from_ne_bytes(received[at..at + 4].try_into().unwrap()) as usize;
            if length < 16 || at + length > size {
                return Err(io::Error::other(
                    "a truncated netlink message in the filter dump",
                ));
            }
            // A message netlink-packet-route cannot decode is skipped, unless it is the
            // instance's own filter (its handle and tcm_info in the tcmsg after the 16-byte
            // header): that one must never read as gone.
            let bytes = &received[at..at + length];
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes);
            if message.is_err() && own_filter(bytes) {
                return Err(io::Error::other(
                    "the kernel's description of the instance's filter could not be decoded",
                ));
            }
            if let Ok(message) = message {
                match message.payload {
                    NetlinkPayload::Done(done) if done.code != 0 => {
                        return Err(io::Error::from_raw_os_error(-done.code))
                    }
                    NetlinkPayload::Done(_) => return Ok(messages),
                    NetlinkPayload::Error(err) if err.code.is_some() => return Err(err.to_io()),
                    NetlinkPayload::InnerMessage(inner) => messages.push(inner),
                    _ => {}
                }
            }
            // Messages are 4-byte aligned.
            at += (length + 3) & !3;
        }
    }
    Err(io::Error::other("the kernel's filter dump did not end"))
}

/// Whether a raw RTM_NEWTFILTER message names the instance's place: after the 16-byte
/// netlink header, tcmsg has its handle at offset 8 and tcm_info at 16.
fn own_filter(bytes: &[u8]) -> bool {
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|w| u32::from_ne_bytes(w.try_into().unwrap()))
    };
    word(16 + 8) == Some(HANDLE) && word(16 + 16) == Some(tcm_info())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::tc::TcHeader;

    #[test]
    fn a_raw_message_of_the_instance_s_filter_is_recognised() {
        let mut message = TcMessage::with_index(7);
        message.header = TcHeader {
            handle: HANDLE.into(),
            info: tcm_info(),
            ..message.header
        };
        let mut packet = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(RouteNetlinkMessage::NewTrafficFilter(message)),
        );
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        assert!(own_filter(&bytes));
        bytes[24] ^= 1;
        assert!(!own_filter(&bytes));
        assert!(!own_filter(&bytes[..20]));
    }
}
