//! Append-only segment files that hold the bytes of log records, so that sled keeps only a
//! small index entry per record. sled copies a whole leaf node on every insert and rewrites it
//! to disk every few inserts; with the records inside the tree, a leaf held sixteen records of
//! several KiB each and every append paid for all of them. Here an append is one positioned
//! write to the active segment, and a sync is one `fdatasync` per segment written since the
//! last.
//!
//! A segment is `<id>.seg` (sixteen hex digits) in the segments directory. Each record is
//! framed by its length (u32) and a CRC-32 of its bytes (u32), big-endian, so a read can tell
//! a record that a power loss tore or never wrote from a good one. Segments are never appended
//! to after a restart: each run starts a new one. A segment whose records are all removed
//! from the index (retention, expiry, truncation) is deleted; the live count per segment is
//! rebuilt from the index at start.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::StoreError;

/// Bytes of the frame in front of every record: its length and its CRC-32.
pub const FRAME_HEADER: usize = 8;
/// A segment is closed and a new one started once it reaches this size.
const SEGMENT_BYTES: u64 = 64 << 20;
const SUFFIX: &str = ".seg";

/// Where a record's bytes are: segment, offset of its frame, and the record's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The segment's id.
    pub segment: u64,
    /// Offset of the frame in the segment.
    pub offset: u64,
    /// Length of the record, without its frame header.
    pub len: u32,
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

/// A record read back: the frame, whose bytes after [`FRAME_HEADER`] are the record.
pub struct Frame(Vec<u8>);

impl Frame {
    /// The record's bytes.
    pub fn body(&self) -> &[u8] {
        &self.0[FRAME_HEADER..]
    }
}

/// The segment being appended to.
struct Active {
    id: u64,
    file: Arc<File>,
    len: u64,
}

struct State {
    active: Active,
    /// Closed segments written since the last sync, which the next sync must cover.
    unsynced: Vec<Arc<File>>,
    /// Open handles for reading, opened on first use.
    open: HashMap<u64, Arc<File>>,
    /// Index entries pointing into each segment.
    live: HashMap<u64, u64>,
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
    /// newest. `live` counts the index entries per segment; segments with none are deleted.
    pub fn open(dir: &Path, live: HashMap<u64, u64>) -> Result<Segments, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| engine("creating", dir, e))?;
        let mut newest = 0;
        for id in Segments::list(dir)? {
            newest = newest.max(id);
            if !live.contains_key(&id) {
                let path = segment_path(dir, id);
                std::fs::remove_file(&path).map_err(|e| engine("removing", &path, e))?;
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
            }),
        })
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
        })
    }

    /// Writes one record to the active segment and counts it as live. `frame` must start
    /// with [`FRAME_HEADER`] bytes of room, which this fills in. Not durable until
    /// [`Segments::sync`].
    pub fn write(&self, frame: &mut [u8]) -> Result<Location, StoreError> {
        let body = frame
            .len()
            .checked_sub(FRAME_HEADER)
            .ok_or_else(|| StoreError::Engine("a record frame without its header".to_owned()))?;
        let len = u32::try_from(body)
            .map_err(|_| StoreError::Engine(format!("a record of {body} bytes")))?;
        let crc = crc32fast::hash(&frame[FRAME_HEADER..]);
        frame[..4].copy_from_slice(&len.to_be_bytes());
        frame[4..8].copy_from_slice(&crc.to_be_bytes());
        let mut state = self.state.lock().expect("segments lock");
        if state.active.len > 0 && state.active.len + frame.len() as u64 > SEGMENT_BYTES {
            let next = Segments::create(&self.dir, state.active.id + 1)?;
            let closed = std::mem::replace(&mut state.active, next);
            state.unsynced.push(closed.file.clone());
            state.open.insert(closed.id, closed.file);
        }
        let at = Location {
            segment: state.active.id,
            offset: state.active.len,
            len,
        };
        state
            .active
            .file
            .write_all_at(frame, at.offset)
            .map_err(|e| engine("writing", &segment_path(&self.dir, at.segment), e))?;
        state.active.len += frame.len() as u64;
        *state.live.entry(at.segment).or_insert(0) += 1;
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
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let crc = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if len != at.len || crc != crc32fast::hash(&frame[FRAME_HEADER..]) {
            tracing::warn!(
                segment = at.segment,
                offset = at.offset,
                "a log record does not match its checksum; skipped"
            );
            return Ok(None);
        }
        Ok(Some(Frame(frame)))
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

    /// Notes that an index entry pointing into `segment` was removed; deletes the segment
    /// once none is left (never the active one).
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
        drop(state);
        let path = segment_path(&self.dir, segment);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a log segment");
        }
    }

    /// How many segment files exist (the active one included).
    pub fn count(&self) -> usize {
        let state = self.state.lock().expect("segments lock");
        state.live.len() + usize::from(!state.live.contains_key(&state.active.id))
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}{SUFFIX}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut frame = vec![0; FRAME_HEADER];
        frame.extend_from_slice(body);
        frame
    }

    #[test]
    fn records_read_back_and_a_torn_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path(), HashMap::new()).unwrap();
        let a = segments.write(&mut framed(b"first")).unwrap();
        let b = segments.write(&mut framed(b"second")).unwrap();
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
    fn a_segment_is_deleted_once_nothing_points_into_it() {
        let dir = tempfile::tempdir().unwrap();
        let first;
        {
            let segments = Segments::open(dir.path(), HashMap::new()).unwrap();
            first = segments.write(&mut framed(b"kept")).unwrap();
            segments.write(&mut framed(b"dropped")).unwrap();
            segments.sync().unwrap();
        }
        // Reopened with one live entry in the old segment: it stays, a new one starts.
        let segments = Segments::open(dir.path(), HashMap::from([(first.segment, 1)])).unwrap();
        assert_eq!(segments.count(), 2);
        let next = segments.write(&mut framed(b"new")).unwrap();
        assert_eq!(next.segment, first.segment + 1);
        assert_eq!(segments.read(first).unwrap().unwrap().body(), b"kept");
        segments.release(first.segment);
        assert!(segments.read(first).unwrap().is_none());
        assert!(!segment_path(dir.path(), first.segment).exists());
        // The active segment stays even when its last record goes.
        segments.release(next.segment);
        assert!(segment_path(dir.path(), next.segment).exists());
        // A reopening that finds no entry for a segment removes it.
        drop(segments);
        let segments = Segments::open(dir.path(), HashMap::new()).unwrap();
        assert_eq!(segments.count(), 1);
        assert_eq!(Segments::lengths(dir.path()).unwrap().len(), 1);
    }
}
