//! Deliberately broken databases for failure-path tests.

use super::writer::METADATA_MARKER;
use super::MmdbError;

/// Cuts `db` off one byte after its metadata marker, leaving the map's control byte (which
/// announces nine pairs) with none of the pairs. Readers find the marker and then fail to
/// decode the metadata.
pub fn truncate_metadata(db: &[u8]) -> Result<Vec<u8>, MmdbError> {
    let start = db.windows(METADATA_MARKER.len()).rposition(|w| w == METADATA_MARKER).ok_or_else(MmdbError::not_a_database)?;
    let keep = (start + METADATA_MARKER.len() + 1).min(db.len());
    Ok(db.get(..keep).unwrap_or(db).to_vec())
}
