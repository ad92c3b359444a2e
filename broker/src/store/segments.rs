//! Append-only segment files that hold the bytes of log records, so that sled keeps only a
//! small index entry per record. sled copies a whole leaf node on every insert and rewrites it
//! to disk every few inserts; with the records inside the tree, a leaf held sixteen records of
//! several KiB each and every append paid for all of them. Here an append is one positioned
//! write to the active segment, and a sync is one `fdatasync` per segment written since the
//! last.
//!
//! A segment is `<id>.seg` (sixteen hex digits) in the segments directory. Each frame is its
//! length (u32) and a CRC-32 of its body (u32), big-endian, then the body, so a read can tell
//! a frame that a power loss tore or never wrote from a good one. The top bit of the length
//! marks a *tagged* frame, whose body is a tag (its length as u16, then its bytes) followed by
//! the record: the tag says what the frame does to the index, so that the segments are also
//! the write-ahead log of the index (see `sled_log`). Frames written before tags existed are
//! bare records. Segments are never appended to after a restart: each run starts a new one.
//! A segment whose records are all removed from the index is deleted once the index's removal
//! is itself durable ([`Segments::collect`]); the live count per segment is rebuilt from the
//! index at start.
//!
//! The active segment is allocated ahead of its writes, [`PREALLOCATE`] bytes at a time, so
//! that an append's `fdatasync` need not also persist a new file size: that made a lone
//! append's sync about a quarter cheaper (209 → 153 µs in the log bench). The unwritten part reads as zeros, which no frame
//! starts with, so a scan stops there. A segment is cut back to its frames when it is closed,
//! at a clean stop, and by replay after an unclean one ([`Segments::cut`]), so that a file's
//! length is where its frames end whenever the index is checked against it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::StoreError;

/// Bytes of the frame in front of every body: its length and its CRC-32.
pub const FRAME_HEADER: usize = 8;
/// The bit of the length field that marks a tagged frame.
const TAGGED: u32 = 1 << 31;
/// A segment is closed and a new one started once it reaches this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// How far ahead of its writes the active segment is allocated.
pub const PREALLOCATE: u64 = 4 << 20;
const SUFFIX: &str = ".seg";

/// Where a frame is: segment, offset of the frame, and the length of its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The segment's id.
    pub segment: u64,
    /// Offset of the frame in the segment.
    pub offset: u64,
    /// Length of the frame's body, without its frame header.
    pub len: u32,
}

/// A point in the sequence of frames: everything written before it has a lower segment id,
/// or the same id and a lower offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The segment.
    pub segment: u64,
    /// The offset in it.
    pub offset: u64,
}

impl Position {
    /// Bytes of [`Position::encode`].
    pub const LEN: usize = 16;

    /// The position, big-endian.
    pub fn encode(&self) -> [u8; Position::LEN] {
        let mut out = [0; Position::LEN];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..].copy_from_slice(&self.offset.to_be_bytes());
        out
    }

    /// Reads a position written by [`Position::encode`].
    pub fn decode(bytes: &[u8]) -> Option<Position> {
        Some(Position {
            segment: u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?),
            offset: u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?),
        })
    }
}

impl Location {
    /// Bytes of [`Location::encode`].
    pub const LEN: usize = 8 + 8 + 4;

    /// Appends the location to `out`, big-endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.segment.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
    }

    /// Reads a location written by [`Location::encode`].
    pub fn decode(bytes: &[u8]) -> Option<Location> {
        let bytes = bytes.get(..Location::LEN)?;
        Some(Location {
            segment: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            offset: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
            len: u32::from_be_bytes(bytes[16..20].try_into().ok()?),
        })
    }
}

/// A frame read back.
pub struct Frame {
    bytes: Vec<u8>,
    record_at: usize,
}

impl Frame {
    /// The record's bytes (after the tag, if the frame has one).
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.record_at..]
    }
}

/// Starts a tagged frame: room for the frame header, then `tag`. The caller appends the record
/// and hands the whole to [`Segments::write`]. Returns the buffer and where the record starts.
pub fn tagged_frame(tag: &[u8], record_capacity: usize) -> Result<(Vec<u8>, usize), StoreError> {
    let tag_len = u16::try_from(tag.len())
        .map_err(|_| StoreError::Engine(format!("a frame tag of {} bytes", tag.len())))?;
    let record_at = FRAME_HEADER + 2 + tag.len();
    let mut frame = Vec::with_capacity(record_at + record_capacity);
    frame.extend_from_slice(&[0; FRAME_HEADER]);
    frame.extend_from_slice(&tag_len.to_be_bytes());
    frame.extend_from_slice(tag);
    Ok((frame, record_at))
}

/// Splits a frame body into tag and record: a tagged body starts with its tag's length.
fn split_body(tagged: bool, body: &[u8]) -> Option<(&[u8], &[u8])> {
    if !tagged {
        return Some((&[], body));
    }
    let tag_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let tag = body.get(2..2 + tag_len)?;
    Some((tag, &body[2 + tag_len..]))
}

/// The segment being appended to.
struct Active {
    id: u64,
    file: Arc<File>,
    /// Where its frames end.
    len: u64,
    /// How much of it is allocated (see [`PREALLOCATE`]); at least `len`.
    allocated: u64,
}

impl Active {
    /// Allocates the file ahead of a write that ends at `end`. A file system that cannot
    /// allocate ahead simply grows the file with each write, as without preallocation.
    fn allocate(&mut self, end: u64) {
        if end <= self.allocated {
            return;
        }
        let upto = end.max((self.allocated + PREALLOCATE).min(SEGMENT_BYTES));
        match rustix::fs::fallocate(
            &*self.file,
            rustix::fs::FallocateFlags::empty(),
            self.allocated,
            upto - self.allocated,
        ) {
            Ok(()) => self.allocated = upto,
            Err(e) => {
                tracing::debug!(segment = self.id, error = %e, "cannot allocate a log segment ahead");
                self.allocated = u64::MAX;
            }
        }
    }

    /// Cuts the file back to its frames, giving up what was allocated beyond them.
    fn cut(&mut self, dir: &Path) -> Result<(), StoreError> {
        if self.allocated > self.len {
            self.file
                .set_len(self.len)
                .map_err(|e| engine("cutting", &segment_path(dir, self.id), e))?;
            self.allocated = self.len;
        }
        Ok(())
    }
}

struct State {
    active: Active,
    /// Closed segments written since the last sync, which the next sync must cover.
    unsynced: Vec<Arc<File>>,
    /// Open handles for reading, opened on first use.
    open: HashMap<u64, Arc<File>>,
    /// Index entries pointing into each segment.
    live: HashMap<u64, u64>,
    /// Segments nothing points into any more, deleted by [`Segments::collect`].
    doomed: Vec<u64>,
}

/// The segment files of one data directory, shared by every log that indexes into them.
pub struct Segments {
    dir: PathBuf,
    state: Mutex<State>,
}

fn engine(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{what} {}: {e}", path.display()))
}

impl Segments {
    /// Opens the segments in `dir` (created if missing) and starts a new segment after the
    /// newest. `live` counts the index entries per segment; segments with none are deleted
    /// by the first [`Segments::collect`].
    pub fn open(dir: &Path, live: HashMap<u64, u64>) -> Result<Segments, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| engine("creating", dir, e))?;
        let mut newest = 0;
        let mut doomed = Vec::new();
        for id in Segments::list(dir)? {
            newest = newest.max(id);
            if !live.contains_key(&id) {
                doomed.push(id);
            }
        }
        let active = Segments::create(dir, newest + 1)?;
        Ok(Segments {
            dir: dir.to_owned(),
            state: Mutex::new(State {
                active,
                unsynced: Vec::new(),
                open: HashMap::new(),
                live,
                doomed,
            }),
        })
    }

    /// Where the next frame goes.
    pub fn position(&self) -> Position {
        let state = self.state.lock().expect("segments lock");
        Position {
            segment: state.active.id,
            offset: state.active.len,
        }
    }

    /// Calls `visit` with the location, tag and record of every intact tagged frame from
    /// `from` on, in the order they were written. A segment's frames end at the first one
    /// that is torn or was never written (a power loss before its sync, or the part allocated
    /// ahead): nothing after it in that segment was acknowledged. Returns where the frames of
    /// each segment scanned end, for [`Segments::cut`].
    pub fn scan(
        dir: &Path,
        from: Position,
        mut visit: impl FnMut(Location, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<HashMap<u64, u64>, StoreError> {
        let mut ends = HashMap::new();
        if !dir.exists() {
            return Ok(ends);
        }
        let mut ids: Vec<u64> = Segments::list(dir)?
            .into_iter()
            .filter(|&id| id >= from.segment)
            .collect();
        ids.sort_unstable();
        for id in ids {
            let path = segment_path(dir, id);
            let bytes = std::fs::read(&path).map_err(|e| engine("reading", &path, e))?;
            let mut offset = if id == from.segment { from.offset } else { 0 };
            while let Some(header) = bytes.get(offset as usize..offset as usize + FRAME_HEADER) {
                let field = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                if field == 0 {
                    // Never written: allocated ahead, or a hole a power loss left.
                    break;
                }
                let len = field & !TAGGED;
                let start = offset as usize + FRAME_HEADER;
                let Some(body) = bytes.get(start..start + len as usize) else {
                    break;
                };
                if crc != crc32fast::hash(body) {
                    break;
                }
                if field & TAGGED != 0 {
                    let Some((tag, record)) = split_body(true, body) else {
                        break;
                    };
                    visit(
                        Location {
                            segment: id,
                            offset,
                            len,
                        },
                        tag,
                        record,
                    )?;
                }
                offset += (FRAME_HEADER + len as usize) as u64;
            }
            ends.insert(id, offset);
        }
        Ok(ends)
    }

    /// Cuts each segment in `ends` (from [`Segments::scan`]) back to where its intact frames
    /// end, and makes that durable: what lies beyond was never acknowledged, or was only
    /// allocated ahead.
    pub fn cut(dir: &Path, ends: &HashMap<u64, u64>) -> Result<(), StoreError> {
        for (&id, &end) in ends {
            let path = segment_path(dir, id);
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| engine("opening", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| engine("reading", &path, e))?
                .len();
            if len > end {
                file.set_len(end)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| engine("cutting", &path, e))?;
            }
        }
        Ok(())
    }

    /// The ids of the segment files in `dir`, with each file's length.
    pub fn lengths(dir: &Path) -> Result<HashMap<u64, u64>, StoreError> {
        let mut lengths = HashMap::new();
        if !dir.exists() {
            return Ok(lengths);
        }
        for id in Segments::list(dir)? {
            let path = segment_path(dir, id);
            let meta = std::fs::metadata(&path).map_err(|e| engine("reading", &path, e))?;
            lengths.insert(id, meta.len());
        }
        Ok(lengths)
    }

    fn list(dir: &Path) -> Result<Vec<u64>, StoreError> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| engine("listing", dir, e))? {
            let name = entry.map_err(|e| engine("listing", dir, e))?.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
            ids.extend(id);
        }
        Ok(ids)
    }

    fn create(dir: &Path, id: u64) -> Result<Active, StoreError> {
        let path = segment_path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| engine("creating", &path, e))?;
        // The new file's directory entry must survive a crash along with what is synced.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| engine("syncing", dir, e))?;
        Ok(Active {
            id,
            file: Arc::new(file),
            len: 0,
            allocated: 0,
        })
    }

    /// Writes one tagged frame (begun by [`tagged_frame`]) to the active segment, counting
    /// it as live when an index entry will point to it. Not durable until
    /// [`Segments::sync`].
    pub fn write(&self, frame: &mut [u8], live: bool) -> Result<Location, StoreError> {
        let body = frame
            .len()
            .checked_sub(FRAME_HEADER)
            .ok_or_else(|| StoreError::Engine("a record frame without its header".to_owned()))?;
        let len = u32::try_from(body)
            .ok()
            .filter(|len| len & TAGGED == 0)
            .ok_or_else(|| StoreError::Engine(format!("a record of {body} bytes")))?;
        if split_body(true, &frame[FRAME_HEADER..]).is_none() {
            return Err(StoreError::Engine(
                "a frame with a malformed tag".to_owned(),
            ));
        }
        let crc = crc32fast::hash(&frame[FRAME_HEADER..]);
        frame[..4].copy_from_slice(&(len | TAGGED).to_be_bytes());
        frame[4..8].copy_from_slice(&crc.to_be_bytes());
        let mut state = self.state.lock().expect("segments lock");
        if state.active.len > 0 && state.active.len + frame.len() as u64 > SEGMENT_BYTES {
            let next = Segments::create(&self.dir, state.active.id + 1)?;
            let mut closed = std::mem::replace(&mut state.active, next);
            // The next sync makes the cut durable along with the segment's last frames.
            closed.cut(&self.dir)?;
            state.unsynced.push(closed.file.clone());
            state.open.insert(closed.id, closed.file);
        }
        let at = Location {
            segment: state.active.id,
            offset: state.active.len,
            len,
        };
        state.active.allocate(at.offset + frame.len() as u64);
        state
            .active
            .file
            .write_all_at(frame, at.offset)
            .map_err(|e| engine("writing", &segment_path(&self.dir, at.segment), e))?;
        state.active.len += frame.len() as u64;
        if live {
            *state.live.entry(at.segment).or_insert(0) += 1;
        }
        Ok(at)
    }

    /// Reads the record at `at`; `None` when its segment is gone or the bytes there are not
    /// the record (torn by a power loss before its sync, so never acknowledged).
    pub fn read(&self, at: Location) -> Result<Option<Frame>, StoreError> {
        let Some(file) = self.file(at.segment)? else {
            return Ok(None);
        };
        let mut frame = vec![0; FRAME_HEADER + at.len as usize];
        match file.read_exact_at(&mut frame, at.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(engine("reading", &segment_path(&self.dir, at.segment), e)),
        }
        let field = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let crc = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let tagged = field & TAGGED != 0;
        let body = &frame[FRAME_HEADER..];
        let record = (field & !TAGGED == at.len && crc == crc32fast::hash(body))
            .then(|| split_body(tagged, body))
            .flatten()
            .map(|(_, record)| frame.len() - record.len());
        let Some(record_at) = record else {
            tracing::warn!(
                segment = at.segment,
                offset = at.offset,
                "a log record does not match its checksum; skipped"
            );
            return Ok(None);
        };
        Ok(Some(Frame {
            bytes: frame,
            record_at,
        }))
    }

    fn file(&self, id: u64) -> Result<Option<Arc<File>>, StoreError> {
        let mut state = self.state.lock().expect("segments lock");
        if id == state.active.id {
            return Ok(Some(state.active.file.clone()));
        }
        if let Some(file) = state.open.get(&id) {
            return Ok(Some(file.clone()));
        }
        if !state.live.contains_key(&id) {
            return Ok(None);
        }
        let path = segment_path(&self.dir, id);
        match File::open(&path) {
            Ok(file) => {
                let file = Arc::new(file);
                state.open.insert(id, file.clone());
                Ok(Some(file))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(engine("opening", &path, e)),
        }
    }

    /// Makes every record written so far durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        let (closed, active) = {
            let mut state = self.state.lock().expect("segments lock");
            (
                std::mem::take(&mut state.unsynced),
                state.active.file.clone(),
            )
        };
        for file in closed.iter().chain([&active]) {
            file.sync_data()
                .map_err(|e| StoreError::Engine(format!("syncing a log segment: {e}")))?;
        }
        Ok(())
    }

    /// Syncs, then cuts the active segment back to its frames and syncs that too: at a clean
    /// stop, after which opening checks the index against the files' lengths without a
    /// replay. A later write allocates ahead again.
    pub fn close(&self) -> Result<(), StoreError> {
        self.sync()?;
        let mut state = self.state.lock().expect("segments lock");
        state.active.cut(&self.dir)?;
        state
            .active
            .file
            .sync_data()
            .map_err(|e| StoreError::Engine(format!("syncing a log segment: {e}")))
    }

    /// Notes that an index entry pointing into `segment` was removed. Once none is left
    /// (and it is not the active one) the segment is doomed: reads of it find nothing, and
    /// [`Segments::collect`] deletes it.
    pub fn release(&self, segment: u64) {
        let mut state = self.state.lock().expect("segments lock");
        let Some(count) = state.live.get_mut(&segment) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count > 0 || segment == state.active.id {
            return;
        }
        state.live.remove(&segment);
        state.open.remove(&segment);
        state.doomed.push(segment);
    }

    /// Deletes the doomed segments older than `before`. The index's write-ahead log replays
    /// frames from its checkpoint on, so a segment may go only once it lies wholly before a
    /// durable checkpoint: until then its frames may still be needed to redo a removal.
    pub fn collect(&self, before: u64) {
        let gone: Vec<u64> = {
            let mut state = self.state.lock().expect("segments lock");
            let (gone, kept) = state.doomed.iter().partition(|&&id| id < before);
            state.doomed = kept;
            gone
        };
        for segment in gone {
            let path = segment_path(&self.dir, segment);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a log segment");
            }
        }
    }

    /// How many segment files exist (the active one included).
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        Segments::list(&self.dir).map_or(0, |ids| ids.len())
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}{SUFFIX}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let (mut frame, _) = tagged_frame(b"tag", body.len()).unwrap();
        frame.extend_from_slice(body);
        frame
    }

    #[test]
    fn records_read_back_and_a_torn_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path(), HashMap::new()).unwrap();
        let a = segments.write(&mut framed(b"first"), true).unwrap();
        let b = segments.write(&mut framed(b"second"), true).unwrap();
        segments.sync().unwrap();
        assert_eq!(segments.read(a).unwrap().unwrap().body(), b"first");
        assert_eq!(segments.read(b).unwrap().unwrap().body(), b"second");
        // A location past the end (an index entry whose record never reached the disk) and
        // damaged bytes both read as missing, not as garbage.
        let past = Location {
            offset: b.offset + 100,
            ..b
        };
        assert!(segments.read(past).unwrap().is_none());
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), a.segment))
            .unwrap();
        file.write_all_at(b"X", a.offset + FRAME_HEADER as u64)
            .unwrap();
        assert!(segments.read(a).unwrap().is_none());
        assert_eq!(segments.read(b).unwrap().unwrap().body(), b"second");
    }

    #[test]
    fn a_segment_is_deleted_once_nothing_points_into_it_and_a_checkpoint_passed_it() {
        let dir = tempfile::tempdir().unwrap();
        let first;
        {
            let segments = Segments::open(dir.path(), HashMap::new()).unwrap();
            first = segments.write(&mut framed(b"kept"), true).unwrap();
            segments.write(&mut framed(b"dropped"), true).unwrap();
            segments.sync().unwrap();
        }
        // Reopened with one live entry in the old segment: it stays, a new one starts.
        let segments = Segments::open(dir.path(), HashMap::from([(first.segment, 1)])).unwrap();
        assert_eq!(segments.count(), 2);
        let next = segments.write(&mut framed(b"new"), true).unwrap();
        assert_eq!(next.segment, first.segment + 1);
        assert_eq!(segments.read(first).unwrap().unwrap().body(), b"kept");
        segments.release(first.segment);
        // Unreadable at once, but on disk until a checkpoint lies past it.
        assert!(segments.read(first).unwrap().is_none());
        segments.collect(first.segment);
        assert!(segment_path(dir.path(), first.segment).exists());
        segments.collect(next.segment);
        assert!(!segment_path(dir.path(), first.segment).exists());
        // The active segment stays even when its last record goes.
        segments.release(next.segment);
        segments.collect(u64::MAX);
        assert!(segment_path(dir.path(), next.segment).exists());
        // A reopening that finds no entry for a segment removes it at the first collection.
        drop(segments);
        let segments = Segments::open(dir.path(), HashMap::new()).unwrap();
        assert_eq!(segments.count(), 2);
        segments.collect(segments.position().segment);
        assert_eq!(segments.count(), 1);
        assert_eq!(Segments::lengths(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_scan_returns_tagged_frames_in_order_from_a_position_up_to_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path(), HashMap::new()).unwrap();
        let tagged = |tag: &[u8], record: &[u8]| {
            let (mut frame, _) = tagged_frame(tag, record.len()).unwrap();
            frame.extend_from_slice(record);
            frame
        };
        segments.write(&mut tagged(b"a", b"one"), true).unwrap();
        let from = segments.position();
        segments.write(&mut tagged(b"b", b"two"), true).unwrap();
        let removal = segments.write(&mut tagged(b"c", b""), false).unwrap();
        let torn = segments.write(&mut tagged(b"d", b"four"), true).unwrap();
        segments.write(&mut tagged(b"e", b"five"), true).unwrap();
        segments.sync().unwrap();
        let seen = |from| {
            let mut seen = Vec::new();
            Segments::scan(dir.path(), from, |at, tag, record| {
                seen.push((at.offset, tag.to_vec(), record.to_vec()));
                Ok(())
            })
            .unwrap();
            seen
        };
        let all = seen(from);
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].0, from.offset);
        assert_eq!(
            (all[0].1.as_slice(), all[0].2.as_slice()),
            (&b"b"[..], &b"two"[..])
        );
        assert_eq!((all[1].0, all[1].2.is_empty()), (removal.offset, true));
        // A frame torn by a power loss ends the segment's frames: nothing after it was synced.
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), torn.segment))
            .unwrap();
        file.write_all_at(b"X", torn.offset + torn.len as u64)
            .unwrap();
        let kept = seen(from);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[1].1, b"c");
        // A tagged frame reads back as its record alone.
        assert_eq!(segments.read(removal).unwrap().unwrap().body(), b"");
    }

    #[test]
    fn the_active_segment_is_allocated_ahead_and_cut_back_to_its_frames() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path(), HashMap::new()).unwrap();
        let at = segments.write(&mut framed(b"only"), true).unwrap();
        segments.sync().unwrap();
        let end = at.offset + (FRAME_HEADER + at.len as usize) as u64;
        let length = |dir: &Path| Segments::lengths(dir).unwrap()[&at.segment];
        assert!(
            length(dir.path()) >= PREALLOCATE,
            "allocated ahead of the write"
        );
        // The zeros allocated ahead end a scan like a frame never written.
        let start = Position {
            segment: 0,
            offset: 0,
        };
        let mut seen = 0;
        let ends = Segments::scan(dir.path(), start, |_, _, _| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((seen, ends[&at.segment]), (1, end));
        // Replay after an unclean stop cuts the segment to what the scan found...
        Segments::cut(dir.path(), &ends).unwrap();
        assert_eq!(length(dir.path()), end);
        // ...and a clean stop cuts the active one; a later write allocates ahead again.
        let more = segments.write(&mut framed(b"more"), true).unwrap();
        segments.close().unwrap();
        assert_eq!(
            length(dir.path()),
            more.offset + (FRAME_HEADER + more.len as usize) as u64
        );
        assert_eq!(segments.read(more).unwrap().unwrap().body(), b"more");
        segments.write(&mut framed(b"after"), true).unwrap();
        assert!(length(dir.path()) >= PREALLOCATE);
    }
}
