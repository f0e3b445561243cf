//! The counter row of each interface (see `director_fw_common::interfaces`). An interface
//! keeps its row across restarts, in the state file, so that its counters stay its own.

use std::collections::BTreeMap;

use director_fw_common::interfaces::INTERFACE_ROWS;

/// Interface name to counter row (1 and up; row 0 counts interfaces without one).
pub type RowsByName = BTreeMap<String, u8>;

/// The rows of `ifaces`: the ones they had in `before`, the lowest free ones for the others.
/// Interfaces beyond the rows there are get none, and count with the interfaces not attached.
pub fn assign(before: &RowsByName, ifaces: &[String]) -> RowsByName {
    let mut rows: RowsByName = ifaces
        .iter()
        .filter_map(|iface| Some((iface.clone(), *before.get(iface)?)))
        .collect();
    let taken: Vec<u8> = rows.values().copied().collect();
    let mut free = (1..INTERFACE_ROWS as u8).filter(|row| !taken.contains(row));
    for iface in ifaces {
        if !rows.contains_key(iface) {
            match free.next() {
                Some(row) => rows.insert(iface.clone(), row),
                None => break,
            };
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn interfaces_keep_their_rows_and_new_ones_take_free_rows() {
        let first = assign(&RowsByName::new(), &names(&["eth1", "eth2"]));
        assert_eq!(first, [("eth1".into(), 1), ("eth2".into(), 2)].into());
        let second = assign(&first, &names(&["eth3", "eth2"]));
        assert_eq!(second, [("eth2".into(), 2), ("eth3".into(), 1)].into());
    }

    #[test]
    fn interfaces_beyond_the_rows_get_none() {
        let many: Vec<String> = (0..100).map(|i| format!("veth{i}")).collect();
        let rows = assign(&RowsByName::new(), &many);
        assert_eq!(rows.len(), INTERFACE_ROWS as usize - 1);
        assert!(rows
            .values()
            .all(|&r| r >= 1 && u32::from(r) < INTERFACE_ROWS));
    }
}
