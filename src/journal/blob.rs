//! Header lists as one blob, for stores that keep them in a single column: for each
//! header, the name's and the value's length (4 bytes each, little-endian) and bytes.
//! Also the other shapes both SQL stores share: header names as one text column, and
//! an answer from its three columns.

use bytes::Bytes;

use super::{EntryState, JournalError, RecordedAnswer};

/// Header names as one column: one a line (a header name holds no line break).
pub(crate) fn join_names(names: &[String]) -> String {
    names.join("\n")
}

/// The names of [`join_names`], read back.
pub(crate) fn split_names(column: &str) -> Vec<String> {
    column
        .split('\n')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// An answer from its columns (status, header blob, body), when all three are set.
pub(crate) fn answer(
    status: Option<i64>,
    headers: Option<&[u8]>,
    body: Option<Vec<u8>>,
) -> Result<Option<RecordedAnswer>, JournalError> {
    let (Some(status), Some(headers), Some(body)) = (status, headers, body) else {
        return Ok(None);
    };
    Ok(Some(RecordedAnswer {
        status: status_of(status)?,
        headers: decode(headers)?,
        body: Bytes::from(body),
    }))
}

/// The tombstone of a completed operation past `keep_answers`, from its status and
/// header columns.
pub(crate) fn expired(
    status: Option<i64>,
    headers: Option<&[u8]>,
) -> Result<EntryState, JournalError> {
    let (Some(status), Some(headers)) = (status, headers) else {
        return Err(JournalError::corrupt(
            "an expired answer without its status and headers",
        ));
    };
    Ok(EntryState::AnswerExpired {
        status: status_of(status)?,
        headers: decode(headers)?,
    })
}

fn status_of(status: i64) -> Result<u16, JournalError> {
    u16::try_from(status).map_err(|_| JournalError::corrupt(format!("status {status}")))
}

/// The headers as one blob.
pub(crate) fn encode(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        for part in [name.as_bytes(), value.as_slice()] {
            // A header is far below 4 GiB; a longer one could not have been sent.
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

pub(crate) fn decode(mut blob: &[u8]) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
    let bad = || JournalError::corrupt("a header list is damaged");
    let take = |blob: &mut &[u8]| -> Result<Vec<u8>, JournalError> {
        let (len, rest) = blob.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = usize::try_from(u32::from_le_bytes(*len)).map_err(|_| bad())?;
        if rest.len() < len {
            return Err(bad());
        }
        let (part, rest) = rest.split_at(len);
        *blob = rest;
        Ok(part.to_vec())
    };
    let mut headers = Vec::new();
    while !blob.is_empty() {
        let name = String::from_utf8(take(&mut blob)?).map_err(|_| bad())?;
        let value = take(&mut blob)?;
        headers.push((name, value));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blobs_round_trip_and_damage_is_caught() {
        let headers = vec![
            ("content-type".to_owned(), b"application/json".to_vec()),
            ("x-empty".to_owned(), Vec::new()),
            ("x-bytes".to_owned(), vec![0x80, 0xff]),
        ];
        let blob = encode(&headers);
        assert_eq!(decode(&blob).unwrap(), headers);
        assert!(decode(&blob[..blob.len() - 1]).is_err());
        assert!(decode(&[1, 0]).is_err());
        assert_eq!(decode(&[]).unwrap(), Vec::new());
    }
}
