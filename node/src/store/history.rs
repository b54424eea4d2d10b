//! The `history` and `notices` trees: each user's call history and
//! missed-call notices, keyed user \0 id.

use signalling::{HistoryEntry, Notice};

use super::{dec, enc, user_key, user_prefix, Store, StoreError};

impl Store {
    /// Appends a history entry (its `id` set here), dropping the user's
    /// oldest beyond `max`. Returns the stored entry.
    pub fn add_history(&self, user: &str, mut entry: HistoryEntry, max: usize) -> Result<HistoryEntry, StoreError> {
        let _w = self.writing();
        entry.id = self.next_id()?;
        self.history.insert(user_key(user, entry.id), enc(&entry))?;
        let count = self.history.scan_prefix(user_prefix(user)).keys().count();
        if count > max {
            for k in self.history.scan_prefix(user_prefix(user)).keys().take(count - max) {
                self.history.remove(k?)?;
            }
        }
        Ok(entry)
    }

    /// Up to `limit` entries older than `before` (all if `None`), newest first.
    pub fn history(&self, user: &str, before: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let start = user_key(user, 0);
        let end = user_key(user, before.unwrap_or(u64::MAX));
        self.history
            .range(start..end)
            .rev()
            .take(limit)
            .map(|kv| {
                let (_, v) = kv?;
                dec("history", &v)
            })
            .collect()
    }

    /// Deletes one entry; `false` if the user has no such entry.
    pub fn delete_history(&self, user: &str, id: u64) -> Result<bool, StoreError> {
        let _w = self.writing();
        Ok(self.history.remove(user_key(user, id))?.is_some())
    }

    /// Deletes every entry of `user`; returns how many.
    pub fn clear_history(&self, user: &str) -> Result<usize, StoreError> {
        let _w = self.writing();
        let mut n = 0;
        for k in self.history.scan_prefix(user_prefix(user)).keys() {
            self.history.remove(k?)?;
            n += 1;
        }
        Ok(n)
    }

    /// Stores a notice (its `id` set here) and returns it.
    pub fn add_notice(&self, user: &str, mut notice: Notice) -> Result<Notice, StoreError> {
        let _w = self.writing();
        notice.id = self.next_id()?;
        self.notices.insert(user_key(user, notice.id), enc(&notice))?;
        Ok(notice)
    }

    /// A user's notices, oldest first; read ones only if `include_read`.
    pub fn notices(&self, user: &str, include_read: bool) -> Result<Vec<Notice>, StoreError> {
        let mut out = Vec::new();
        for v in self.notices.scan_prefix(user_prefix(user)).values() {
            let n: Notice = dec("notices", &v?)?;
            if include_read || !n.read {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// Marks a notice read; `false` if the user has no such notice.
    pub fn mark_notice_read(&self, user: &str, id: u64) -> Result<bool, StoreError> {
        let _w = self.writing();
        let key = user_key(user, id);
        let Some(v) = self.notices.get(&key)? else { return Ok(false) };
        let mut n: Notice = dec("notices", &v)?;
        n.read = true;
        self.notices.insert(key, enc(&n))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signalling::{Address, CallId, EndReason, HistoryKind, Media, Outcome};

    fn entry(peer: &str) -> HistoryEntry {
        HistoryEntry {
            id: 0,
            call: CallId("c".into()),
            kind: HistoryKind::Sent,
            peer: Address::parse(peer).expect("addr"),
            media: Media { audio: true, video: false },
            started_at_ms: 1,
            duration_ms: 0,
            outcome: Outcome::NoAnswer,
        }
    }

    #[test]
    fn history_pages_newest_first_and_trims() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        let ids: Vec<u64> =
            (0..5).map(|i| s.add_history("alice", entry(&format!("u{i}@z")), 4).expect("add").id).collect();
        s.add_history("bob", entry("x@z"), 4).expect("add");
        let page = s.history("alice", None, 2).expect("page");
        assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[4], ids[3]]);
        let page = s.history("alice", Some(ids[3]), 10).expect("page");
        assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[2], ids[1]], "oldest trimmed");
        assert!(s.delete_history("alice", ids[2]).expect("del"));
        assert!(!s.delete_history("bob", ids[1]).expect("del"), "not bob's");
        assert_eq!(s.clear_history("alice").expect("clear"), 3);
        assert_eq!(s.history("bob", None, 10).expect("bob").len(), 1);
    }

    #[test]
    fn notices_are_marked_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        let n = Notice {
            id: 0,
            call: CallId("c".into()),
            from: Address::parse("a@z").expect("a"),
            at_ms: 0,
            reason: EndReason::Busy,
            read: false,
        };
        let n = s.add_notice("bob", n).expect("notice");
        assert!(s.mark_notice_read("bob", n.id).expect("read"));
        assert!(s.notices("bob", false).expect("list").is_empty());
        assert_eq!(s.notices("bob", true).expect("list").len(), 1);
    }
}
