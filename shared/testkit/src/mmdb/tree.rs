//! The in-memory search tree: one bit of the address per level, left for 0 and right for 1.
//!
//! Inserting a network walks its prefix bits and sets the link at the prefix's depth, so the
//! last insert wins for every address it covers:
//! - a more specific network splits a less specific leaf into a node whose two links both keep
//!   the old value, then overwrites only its own path;
//! - a less specific network replaces whatever was below it (the old subtree is orphaned and
//!   left out when the tree is serialised).
//!
//! Aliases make a link point at an existing node, so the structure becomes a DAG; serialisation
//! numbers each reachable node once.

use std::collections::VecDeque;

/// Where a record leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// No data for these addresses.
    Empty,
    /// Another node, by arena index.
    Node(u32),
    /// A record, by id in the writer's record store.
    Data(u32),
}

#[derive(Debug, Clone, Copy)]
struct Node {
    left: Link,
    right: Link,
}

impl Node {
    fn get(&self, bit: bool) -> Link {
        if bit {
            self.right
        } else {
            self.left
        }
    }

    fn set(&mut self, bit: bool, link: Link) {
        if bit {
            self.right = link;
        } else {
            self.left = link;
        }
    }
}

/// A network in tree coordinates: the address in the low `bits` bits of a `u128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prefix {
    pub(crate) addr: u128,
    pub(crate) len: u8,
}

#[derive(Debug, Clone)]
pub(crate) struct SearchTree {
    /// Arena; index 0 is the root. Orphaned nodes stay here but are never serialised.
    nodes: Vec<Node>,
    /// Address width: 32 for an IPv4 tree, 128 for an IPv6 tree.
    bits: u8,
}

/// The reachable part of a tree, renumbered for the file: node `i` of `records` is node `i` of
/// the search tree section, and links refer to those numbers.
pub(crate) struct NumberedTree {
    pub(crate) records: Vec<(Link, Link)>,
}

impl SearchTree {
    pub(crate) fn new(bits: u8) -> Self {
        Self { nodes: vec![Node { left: Link::Empty, right: Link::Empty }], bits }
    }

    fn bit(&self, addr: u128, depth: u8) -> bool {
        let shift = u32::from(self.bits.saturating_sub(1).saturating_sub(depth));
        (addr >> shift) & 1 == 1
    }

    fn node(&self, index: u32) -> Node {
        usize::try_from(index).ok().and_then(|i| self.nodes.get(i)).copied().unwrap_or(Node { left: Link::Empty, right: Link::Empty })
    }

    fn node_mut(&mut self, index: u32) -> Option<&mut Node> {
        usize::try_from(index).ok().and_then(|i| self.nodes.get_mut(i))
    }

    /// Makes every address in `prefix` resolve to `link`, overriding earlier inserts.
    ///
    /// A zero-length prefix (the whole address space) sets both links of the root, because the
    /// format has no way to make the root itself a leaf.
    pub(crate) fn insert(&mut self, prefix: Prefix, link: Link) {
        if prefix.len == 0 {
            if let Some(root) = self.node_mut(0) {
                *root = Node { left: link, right: link };
            }
            return;
        }
        let mut node = 0u32;
        for depth in 0..prefix.len - 1 {
            node = self.descend(node, self.bit(prefix.addr, depth));
        }
        let last = self.bit(prefix.addr, prefix.len - 1);
        if let Some(n) = self.node_mut(node) {
            n.set(last, link);
        }
    }

    /// Follows `bit` from `node`, creating a node there first if the link is a leaf. A split
    /// leaf's value is copied to both children so the addresses it covered keep resolving.
    fn descend(&mut self, node: u32, bit: bool) -> u32 {
        match self.node(node).get(bit) {
            Link::Node(child) => child,
            leaf => {
                let child = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
                self.nodes.push(Node { left: leaf, right: leaf });
                if let Some(n) = self.node_mut(node) {
                    n.set(bit, Link::Node(child));
                }
                child
            }
        }
    }

    /// The link that addresses in `prefix` reach after `prefix.len` bits (or earlier, at a leaf).
    pub(crate) fn link_at(&self, prefix: Prefix) -> Link {
        if prefix.len == 0 {
            return Link::Node(0);
        }
        let mut link = Link::Node(0);
        for depth in 0..prefix.len {
            match link {
                Link::Node(n) => link = self.node(n).get(self.bit(prefix.addr, depth)),
                leaf => return leaf,
            }
        }
        link
    }

    /// Makes `alias` lead wherever `target` leads, sharing the target's subtree.
    pub(crate) fn alias(&mut self, alias: Prefix, target: Prefix) {
        let link = self.link_at(target);
        self.insert(alias, link);
    }

    /// Numbers the reachable nodes breadth-first from the root (which must be node 0) and
    /// rewrites node links to those numbers.
    pub(crate) fn number(&self) -> NumberedTree {
        const UNSEEN: u32 = u32::MAX;
        // Indexed by arena position; a Vec rather than a map because trees reach millions of nodes.
        let mut numbers: Vec<u32> = vec![UNSEEN; self.nodes.len()];
        let mut order: Vec<u32> = Vec::new();
        let mut queue = VecDeque::from([0u32]);
        if let Some(root) = numbers.first_mut() {
            *root = 0;
        }
        let mut next = 1u32;
        while let Some(index) = queue.pop_front() {
            order.push(index);
            let node = self.node(index);
            for link in [node.left, node.right] {
                let Link::Node(child) = link else { continue };
                let slot = usize::try_from(child).ok().and_then(|i| numbers.get_mut(i));
                if let Some(slot) = slot.filter(|slot| **slot == UNSEEN) {
                    *slot = next;
                    next = next.saturating_add(1);
                    queue.push_back(child);
                }
            }
        }
        let renumber = |link: Link| match link {
            Link::Node(child) => Link::Node(usize::try_from(child).ok().and_then(|i| numbers.get(i)).copied().unwrap_or(0)),
            other => other,
        };
        let records = order
            .iter()
            .map(|&index| {
                let node = self.node(index);
                (renumber(node.left), renumber(node.right))
            })
            .collect();
        NumberedTree { records }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4], len: u8) -> Prefix {
        Prefix { addr: u128::from(u32::from_be_bytes(a)), len }
    }

    #[test]
    fn more_specific_insert_splits_and_keeps_the_rest() {
        let mut tree = SearchTree::new(32);
        tree.insert(v4([10, 0, 0, 0], 8), Link::Data(1));
        tree.insert(v4([10, 1, 0, 0], 16), Link::Data(2));
        assert_eq!(tree.link_at(v4([10, 1, 2, 3], 32)), Link::Data(2));
        assert_eq!(tree.link_at(v4([10, 2, 0, 0], 32)), Link::Data(1));
        assert_eq!(tree.link_at(v4([11, 0, 0, 0], 32)), Link::Empty);
    }

    #[test]
    fn less_specific_insert_replaces_the_subtree() {
        let mut tree = SearchTree::new(32);
        tree.insert(v4([10, 1, 0, 0], 16), Link::Data(2));
        tree.insert(v4([10, 0, 0, 0], 8), Link::Data(1));
        assert_eq!(tree.link_at(v4([10, 1, 2, 3], 32)), Link::Data(1));
        // The orphaned /16 path is not serialised: only the 8 nodes of the /8 path remain.
        assert_eq!(tree.number().records.len(), 8);
    }

    #[test]
    fn whole_space_sets_both_root_links() {
        let mut tree = SearchTree::new(32);
        tree.insert(v4([0, 0, 0, 0], 0), Link::Data(7));
        assert_eq!(tree.link_at(v4([200, 0, 0, 1], 32)), Link::Data(7));
        assert_eq!(tree.number().records.len(), 1);
    }

    #[test]
    fn aliased_subtree_is_numbered_once() {
        let mut tree = SearchTree::new(32);
        tree.insert(v4([10, 1, 0, 0], 16), Link::Data(2));
        let before = tree.number().records.len();
        tree.alias(v4([192, 0, 0, 0], 8), v4([10, 0, 0, 0], 8));
        assert_eq!(tree.link_at(v4([192, 1, 9, 9], 32)), Link::Data(2));
        // Only the path to 192/8 is new (7 nodes below the shared root); the subtree is shared.
        assert_eq!(tree.number().records.len(), before + 7);
    }
}
