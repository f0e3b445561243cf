//! Attaching a program to an interface so that the attachment can outlive the agent: as a
//! BPF link, which can be pinned, or in TC mode on a kernel without TCX as the instance's
//! netlink filter (see `filter`); and replacing the program of an attachment in one step
//! when a new object takes over.

use aya::programs::{
    links::{FdLink, LinkOrder, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions, TcAttachType},
    xdp::XdpLink,
    ProgramError, SchedClassifier, Xdp, XdpMode,
};
use serde::{Deserialize, Serialize};

use super::{filter, load::Programs, pins::Hold, Datapath, DatapathError, LinkPin};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// Native (driver) XDP; falls back to generic XDP where the driver has no XDP support.
    Xdp,
    /// Generic (skb) XDP.
    XdpGeneric,
    /// TC ingress: a TCX link, or a netlink filter where the kernel has no TCX.
    Tc,
}

impl AttachMode {
    pub const ALL: [AttachMode; 3] = [AttachMode::Xdp, AttachMode::XdpGeneric, AttachMode::Tc];

    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Xdp => "xdp",
            AttachMode::XdpGeneric => "xdp-generic",
            AttachMode::Tc => "tc",
        }
    }

    pub fn from_name(name: &str) -> Option<AttachMode> {
        AttachMode::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The name of the program this mode attaches.
    pub fn program(self) -> &'static str {
        match self {
            AttachMode::Xdp | AttachMode::XdpGeneric => director_fw_common::maps::XDP_PROGRAM,
            AttachMode::Tc => director_fw_common::maps::TC_PROGRAM,
        }
    }

    /// The programs this mode verifies.
    pub fn programs(self) -> Programs {
        match self {
            AttachMode::Xdp | AttachMode::XdpGeneric => Programs::Xdp,
            AttachMode::Tc => Programs::Tc,
        }
    }
}

/// The index of an interface in the caller's network namespace (unlike /sys/class/net, which
/// belongs to the mount namespace); 0 when there is none.
pub(super) fn interface_index(iface: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return 0;
    };
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// Attaches an XDP program to one interface and hands back the link, for the caller to pin.
/// Native XDP that the driver cannot do falls back to generic XDP; the message says so.
pub(super) fn attach_xdp(
    xdp: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> Result<(FdLink, Option<String>), DatapathError> {
    let attach_err = |mode: AttachMode, source| DatapathError::Attach {
        iface: iface.to_string(),
        mode: mode.name(),
        source,
    };
    let mut warning = None;
    let id = match (mode, xdp.attach(iface, XdpMode::Driver)) {
        (AttachMode::Xdp, Ok(id)) => id,
        (AttachMode::Xdp, Err(native)) => {
            warning = Some(format!(
                "{iface}: native XDP is not available ({native}); attached in generic (skb) mode instead, which is slower. Use --mode tc or a driver with XDP support for line rate."
            ));
            xdp.attach(iface, XdpMode::Skb)
                .map_err(|e| attach_err(AttachMode::XdpGeneric, e))?
        }
        _ => xdp
            .attach(iface, XdpMode::Skb)
            .map_err(|e| attach_err(mode, e))?,
    };
    let link = xdp.take_link(id)?;
    Ok((fd_link(iface, link)?, warning))
}

/// An attachment that does not outlive the agent yet: dropping it detaches, pinning it (see
/// [`super::Pins`]) keeps it.
pub enum Attachment {
    /// A BPF link: XDP, or TC through TCX.
    Link(FdLink),
    /// The instance's netlink filter, for TC on a kernel without TCX.
    Filter(SchedClassifierLink),
}

/// Attaches a TC program to one interface's ingress: as a TCX link, or, where the kernel
/// refuses TCX, as the instance's netlink filter. TCX is asked for by trying it, not by the
/// kernel's version, which misses backports such as RHEL's. The message says which it took
/// when it is not TCX.
pub(super) fn attach_tc(
    tc: &mut SchedClassifier,
    iface: &str,
) -> Result<(Attachment, Option<String>), DatapathError> {
    let attach_err = |source| DatapathError::Attach {
        iface: iface.to_string(),
        mode: AttachMode::Tc.name(),
        source,
    };
    let tcx = TcAttachOptions::TcxOrder(LinkOrder::default());
    let refused = match tc.attach_with_options(iface, TcAttachType::Ingress, tcx) {
        Ok(id) => {
            let link = tc.take_link(id)?;
            return Ok((Attachment::Link(fd_link(iface, link)?), None));
        }
        Err(err) => err,
    };
    // A kernel without TCX does not know the attach type; anything else is a real failure.
    let unknown = matches!(&refused, ProgramError::SyscallError(err)
        if matches!(err.io_error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)));
    if !unknown {
        return Err(attach_err(refused));
    }
    let link = filter::attach(tc, iface).map_err(|source| {
        if filter::exists_error(&source) {
            DatapathError::Pins(format!(
                "{iface}: another program's filter holds ingress priority {} handle {:#x}, where director-fw attaches on a kernel without TCX. Remove it with `tc filter del dev {iface} ingress prio {} handle {:#x} bpf`, then start again",
                filter::PRIORITY, filter::HANDLE, filter::PRIORITY, filter::HANDLE
            ))
        } else {
            attach_err(source)
        }
    })?;
    let note = format!(
        "{iface}: this kernel has no TCX, so the program is a direct-action cls_bpf filter on the clsact qdisc (ingress, priority {}, handle {:#x}); it outlives the agent all the same",
        filter::PRIORITY,
        filter::HANDLE
    );
    Ok((Attachment::Filter(link), Some(note)))
}

/// A link that can be pinned, or the refusal to run without one.
fn fd_link<L>(iface: &str, link: L) -> Result<FdLink, DatapathError>
where
    FdLink: TryFrom<L>,
{
    FdLink::try_from(link).map_err(|_| DatapathError::NotALink {
        iface: iface.to_string(),
    })
}

impl Datapath {
    /// Attaches to one interface and hands back the link, for the caller to pin.
    pub fn attach(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(Attachment, Option<String>), DatapathError> {
        if interface_index(iface) == 0 {
            return Err(DatapathError::NoInterface(iface.to_string()));
        }
        match mode {
            AttachMode::Xdp | AttachMode::XdpGeneric => {
                let (link, warning) = attach_xdp(self.xdp_mut()?, iface, mode)?;
                Ok((Attachment::Link(link), warning))
            }
            AttachMode::Tc => attach_tc(self.tc_mut()?, iface),
        }
    }

    /// Puts this datapath's program on a pinned attachment in place of the one there, in one
    /// step: packets see the old program or the new one, and the attachment (and its pin)
    /// stays.
    pub fn replace(&mut self, link: &LinkPin) -> Result<(), DatapathError> {
        match link.mode {
            AttachMode::Xdp | AttachMode::XdpGeneric => Replacing::replace(self.xdp_mut()?, link),
            AttachMode::Tc => Replacing::replace(self.tc_mut()?, link),
        }
    }
}

/// A program that can take the place of another on an attachment.
trait Replacing {
    fn replace(&mut self, link: &LinkPin) -> Result<(), DatapathError>;
}

impl Replacing for Xdp {
    fn replace(&mut self, link: &LinkPin) -> Result<(), DatapathError> {
        let fd = FdLink::from(PinnedLink::from_pin(&link.path)?);
        let id = self.attach_to_link(XdpLink::try_from(fd)?)?;
        // Taken back so that dropping the program does not detach it; the pin holds it.
        drop(FdLink::try_from(self.take_link(id)?)?);
        Ok(())
    }
}

impl Replacing for SchedClassifier {
    fn replace(&mut self, link: &LinkPin) -> Result<(), DatapathError> {
        match link.hold {
            Hold::Link => {
                let fd = FdLink::from(PinnedLink::from_pin(&link.path)?);
                let id = self.attach_to_link(SchedClassifierLink::try_from(fd)?)?;
                drop(FdLink::try_from(self.take_link(id)?)?);
            }
            Hold::Filter => filter::replace(self, &link.iface)?,
        }
        Ok(())
    }
}

/// Puts the pinned program `program` back on the pinned attachment `link` (a hand-over that
/// failed half-way is undone with this).
pub(super) fn put_back(program: &std::path::Path, link: &LinkPin) -> Result<(), DatapathError> {
    match link.mode {
        AttachMode::Xdp | AttachMode::XdpGeneric => {
            Xdp::from_pin(program, aya_obj::programs::XdpAttachType::Interface)?.replace(link)
        }
        AttachMode::Tc => SchedClassifier::from_pin(program)?.replace(link),
    }
}
