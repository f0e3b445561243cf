//! The counter slot of each rule id. A rule keeps its slot for as long as the policy has it,
//! across reloads and restarts, so its counters follow its id and not its position; a new
//! rule gets a free slot, zeroed before the kernel counts in it.

use std::collections::{BTreeMap, BTreeSet};

use director_fw_common::verdict::MAX_RULES;
use serde::{Deserialize, Serialize};

use crate::policy::Policy;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RuleSlots(BTreeMap<String, u32>);

/// The slots of one policy.
pub struct Assigned {
    /// Slot of each rule, in policy order.
    pub slots: Vec<u32>,
    /// Every rule id of the policy and its slot.
    pub table: RuleSlots,
    /// Slots given to rules that had none: they must start from zero.
    pub fresh: Vec<u32>,
}

impl RuleSlots {
    /// Slots for `policy`: the ones its rule ids have, and the lowest free ones for the rest.
    /// Ids the policy no longer has give their slots up.
    pub fn assign(&self, policy: &Policy) -> Assigned {
        let kept: BTreeMap<&str, u32> = policy
            .rules
            .iter()
            .filter_map(|r| Some((r.id.as_str(), *self.0.get(&r.id)?)))
            .filter(|&(_, slot)| slot < MAX_RULES)
            .collect();
        let taken: BTreeSet<u32> = kept.values().copied().collect();
        // A new rule never takes a slot that the policy in force counts in: the slot is
        // zeroed before the switch, and packets of the old policy may still count in it
        // until the grace period after. Only with every other slot taken does it reuse one.
        let in_force: BTreeSet<u32> = self.0.values().copied().collect();
        let mut free = (0..MAX_RULES)
            .filter(|s| !taken.contains(s) && !in_force.contains(s))
            .chain((0..MAX_RULES).filter(|s| in_force.contains(s) && !taken.contains(s)));
        let mut fresh = Vec::new();
        let slots = policy
            .rules
            .iter()
            .map(|rule| match kept.get(rule.id.as_str()) {
                Some(&slot) => slot,
                None => {
                    // A policy has at most MAX_RULES rules, so a free slot is left.
                    let slot = free.next().unwrap_or(0);
                    fresh.push(slot);
                    slot
                }
            })
            .collect::<Vec<_>>();
        let table = RuleSlots(
            policy
                .rules
                .iter()
                .zip(&slots)
                .map(|(r, &s)| (r.id.clone(), s))
                .collect(),
        );
        Assigned {
            slots,
            table,
            fresh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ids: &[&str]) -> Policy {
        let mut text = String::new();
        for id in ids {
            text += &format!("[[rules]]\nid='{id}'\nfrom='a'\nto='b'\nproto='tcp'\nports=['1']\n");
        }
        Policy::from_toml("t", &text).unwrap()
    }

    #[test]
    fn slots_follow_ids_across_reorders_and_removals() {
        let first = RuleSlots::default().assign(&policy(&["x", "y", "z"]));
        assert_eq!(first.slots, [0, 1, 2]);
        assert_eq!(first.fresh, [0, 1, 2]);
        let second = first.table.assign(&policy(&["z", "w", "x"]));
        // z and x keep theirs; w starts from zero in a slot the policy in force does not use.
        assert_eq!(second.slots, [2, 3, 0]);
        assert_eq!(second.fresh, [3]);
        let third = second.table.assign(&policy(&["z", "w", "x"]));
        assert!(third.fresh.is_empty());
        // y's old slot is free again once the policy that used it is gone.
        let fourth = third.table.assign(&policy(&["z", "w", "x", "v"]));
        assert_eq!(fourth.fresh, [1]);
    }
}
