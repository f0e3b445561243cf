//! director-fw kernel programs: thin XDP and TC entry points over one datapath.
#![no_std]
#![no_main]

mod classify;
mod conntrack;
mod counters;
mod events;
mod ingress;
mod maps;
mod parse;
mod rare;
mod verdict;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Headers that TC must be able to read directly; the rest of a non-linear skb stays put.
const TC_PULL_LEN: u32 = 256;

#[xdp]
pub fn director_fw_xdp(ctx: XdpContext) -> u32 {
    if verdict::judge(&ctx) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[classifier]
pub fn director_fw_tc(ctx: TcContext) -> i32 {
    let len = ctx.len();
    let want = if len < TC_PULL_LEN { len } else { TC_PULL_LEN };
    if ctx.data_end() - ctx.data() < want as usize {
        // On failure the checks below see a short frame and judge it malformed.
        let _ = ctx.pull_data(want);
    }
    if verdict::judge(&ctx) {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
