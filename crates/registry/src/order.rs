//! Dependency order: entries start after what they depend on, and stop in reverse.
//! A cycle is a load error naming the entries on it.

use std::collections::{BTreeMap, BTreeSet};

use crate::EntryId;

/// Order `deps` (entry -> entries it depends on) so every entry comes after its
/// dependencies; ties go by ID. Dependencies not in the map are ignored. On a cycle,
/// returns the entries on it, in order (the first repeated at the end).
pub fn start_order(deps: &BTreeMap<EntryId, Vec<EntryId>>) -> Result<Vec<EntryId>, Vec<EntryId>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        id: &'a EntryId,
        deps: &'a BTreeMap<EntryId, Vec<EntryId>>,
        marks: &mut BTreeMap<&'a EntryId, Mark>,
        path: &mut Vec<&'a EntryId>,
        out: &mut Vec<EntryId>,
    ) -> Result<(), Vec<EntryId>> {
        match marks.get(id) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let from = path.iter().position(|p| *p == id).unwrap_or(0);
                let mut cycle: Vec<EntryId> = path[from..].iter().map(|p| (*p).clone()).collect();
                cycle.push(id.clone());
                return Err(cycle);
            }
            None => {}
        }
        marks.insert(id, Mark::Visiting);
        path.push(id);
        let mut ds: BTreeSet<&EntryId> = BTreeSet::new();
        ds.extend(deps.get(id).into_iter().flatten().filter(|d| deps.contains_key(*d)));
        for d in ds {
            visit(d, deps, marks, path, out)?;
        }
        path.pop();
        marks.insert(id, Mark::Done);
        out.push(id.clone());
        Ok(())
    }
    let mut marks = BTreeMap::new();
    let mut out = Vec::new();
    for id in deps.keys() {
        visit(id, deps, &mut marks, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EntryId {
        s.parse().unwrap()
    }

    #[test]
    fn dependencies_come_first() {
        let mut d = BTreeMap::new();
        d.insert(id("a:svc"), vec![id("a:db"), id("a:host")]);
        d.insert(id("a:db"), vec![id("a:host")]);
        d.insert(id("a:host"), vec![]);
        assert_eq!(start_order(&d).unwrap(), vec![id("a:host"), id("a:db"), id("a:svc")]);
    }

    #[test]
    fn a_cycle_is_named() {
        let mut d = BTreeMap::new();
        d.insert(id("a:x"), vec![id("a:y")]);
        d.insert(id("a:y"), vec![id("a:z")]);
        d.insert(id("a:z"), vec![id("a:x")]);
        assert_eq!(start_order(&d).unwrap_err(), vec![id("a:x"), id("a:y"), id("a:z"), id("a:x")]);
    }
}
