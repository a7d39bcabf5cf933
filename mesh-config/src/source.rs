//! Source text and positions.
//!
//! Every diagnostic points at a file, a line and a column. The YAML parser reports
//! positions in characters; editors and terminals want 1-based lines and columns and the
//! renderer wants byte offsets, so a [`SourceFile`] keeps a line index and a character
//! index to convert between them once per file instead of rescanning the text for every
//! diagnostic.
//!
//! Every conversion costs at most a binary search and a walk over [`CHECKPOINT`]
//! characters, whatever the length of the line: `kubectl get -o json | jq -c` writes a
//! whole configuration on one line, and a walk from the start of the line for every
//! position would make reading it quadratic.

use std::sync::Arc;

/// Characters between two entries of a [`SourceFile`]'s character index.
pub const CHECKPOINT: usize = 64;

/// One position in a source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// Line number, starting at 1.
    pub line: u32,
    /// Column number in characters, starting at 1.
    pub column: u32,
    /// Byte offset from the start of the text.
    pub offset: usize,
}

/// A range of a source text, from `start` (inclusive) to `end` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// First position of the range.
    pub start: Pos,
    /// Position just after the range.
    pub end: Pos,
}

impl Span {
    /// A span that covers one position only.
    pub fn point(pos: Pos) -> Self {
        Span {
            start: pos,
            end: pos,
        }
    }
}

/// A named source text (a file, or a string given a name) with its line index.
#[derive(Debug)]
pub struct SourceFile {
    name: String,
    text: String,
    /// Byte offset of the start of every line (lines end with `\n`).
    line_starts: Vec<usize>,
    /// Byte offset of every [`CHECKPOINT`]-th character (characters 0, 64, 128, ...).
    /// Empty when the text is ASCII: characters and bytes are then the same.
    char_checkpoints: Vec<usize>,
    /// The text has a carriage return not followed by a line feed: the parser counts it as
    /// a line break and the line index does not, so the parser's lines cannot be trusted.
    lone_cr: bool,
}

impl SourceFile {
    /// Wraps `text` under `name` (usually the path it was read from).
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Arc<Self> {
        let mut text = text.into();
        // A UTF-8 byte-order mark is not part of the document (editors on Windows add one).
        if text.starts_with('\u{feff}') {
            text.drain(..'\u{feff}'.len_utf8());
        }
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let char_checkpoints = if text.is_ascii() {
            Vec::new()
        } else {
            text.char_indices()
                .step_by(CHECKPOINT)
                .map(|(i, _)| i)
                .collect()
        };
        let lone_cr = text
            .match_indices('\r')
            .any(|(i, _)| text.as_bytes().get(i + 1) != Some(&b'\n'));
        Arc::new(SourceFile {
            name: name.into(),
            text,
            line_starts,
            char_checkpoints,
            lone_cr,
        })
    }

    /// The name the text was given, usually its path.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text of line `line` (1-based), without its line break.
    pub fn line_text(&self, line: u32) -> &str {
        let idx = (line as usize).saturating_sub(1);
        let Some(&start) = self.line_starts.get(idx) else {
            return "";
        };
        let end = self
            .line_starts
            .get(idx + 1)
            .copied()
            .unwrap_or(self.text.len());
        self.text
            .get(start..end)
            .unwrap_or("")
            .trim_end_matches(['\n', '\r'])
    }

    /// Byte offset of the character with index `index` (0-based, counted from the start
    /// of the text); the length of the text past its end.
    pub fn offset_of_char(&self, index: usize) -> usize {
        if self.char_checkpoints.is_empty() {
            return index.min(self.text.len());
        }
        let Some(&base) = self.char_checkpoints.get(index / CHECKPOINT) else {
            return self.text.len();
        };
        let rest = self.text.get(base..).unwrap_or("");
        match rest.char_indices().nth(index % CHECKPOINT) {
            Some((i, _)) => base + i,
            None => self.text.len(),
        }
    }

    /// Index of the character that starts at byte `offset` (which must be a character
    /// boundary; the number of characters of the text past its end).
    fn char_of_offset(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        if self.char_checkpoints.is_empty() {
            return offset;
        }
        let k = self
            .char_checkpoints
            .partition_point(|&b| b <= offset)
            .saturating_sub(1);
        let base = self.char_checkpoints.get(k).copied().unwrap_or(0);
        let walked = self.text.get(base..offset).map_or(0, |s| s.chars().count());
        k * CHECKPOINT + walked
    }

    /// The position of character column `col0` (0-based) on line `line` (1-based).
    ///
    /// Out-of-range values are clamped to the text, never a panic: a column past the end
    /// of the line keeps its number but its offset is the end of the line.
    pub fn pos(&self, line: usize, col0: usize) -> Pos {
        let line = line.clamp(1, self.line_starts.len());
        let start = self.line_starts[line - 1];
        // The line feed that ends the line, or the end of the text.
        let end = self
            .line_starts
            .get(line)
            .map_or(self.text.len(), |&next| next - 1);
        let start_char = self.char_of_offset(start);
        let end_char = self.char_of_offset(end);
        let offset = self.offset_of_char(start_char.saturating_add(col0).min(end_char));
        Pos {
            line: line as u32,
            column: (col0 as u32).saturating_add(1),
            offset,
        }
    }

    /// The position of a YAML parser marker: character `index` (0-based, from the start of
    /// the text) that the parser also places at character column `col0` (0-based) of line
    /// `line` (1-based).
    ///
    /// The character index is used when it agrees with the line and column. It may not:
    /// the parser counts some block scalar lines in bytes rather than characters, and at
    /// the end of the stream it moves to a line that does not exist; the line and column are
    /// then used, as [`SourceFile::pos`] does. In a text with carriage returns alone,
    /// which the parser counts as line breaks and the line index does not, the character
    /// index is the only one that can be trusted.
    pub fn pos_of_marker(&self, index: usize, line: usize, col0: usize) -> Pos {
        let by_index = self.pos_of_offset(self.offset_of_char(index));
        let agrees =
            by_index.line as usize == line && by_index.column as usize == col0.saturating_add(1);
        if agrees || self.lone_cr {
            return by_index;
        }
        self.pos(line, col0)
    }

    /// The position `chars` characters after `start`, or the end of `start`'s line if it
    /// comes first (a line feed or a carriage return). Costs `chars` steps at most.
    pub fn advance(&self, start: Pos, chars: usize) -> Pos {
        let rest = self.text.get(start.offset..).unwrap_or("");
        let mut offset = start.offset;
        let mut walked: u32 = 0;
        for c in rest.chars().take(chars) {
            if c == '\n' || c == '\r' {
                break;
            }
            offset += c.len_utf8();
            walked += 1;
        }
        Pos {
            line: start.line,
            column: start.column.saturating_add(walked),
            offset,
        }
    }

    /// The position of a byte offset (clamped to the text).
    pub fn pos_of_offset(&self, offset: usize) -> Pos {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line_idx = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line_idx];
        let column = (self.char_of_offset(offset) - self.char_of_offset(start)) as u32 + 1;
        Pos {
            line: line_idx as u32 + 1,
            column,
            offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters_and_bytes() {
        let f = SourceFile::new("t.yaml", "a: é1\nb: x\n");
        let p = f.pos(1, 4);
        assert_eq!((p.line, p.column, p.offset), (1, 5, 5));
        let p = f.pos(2, 3);
        assert_eq!((p.line, p.column, p.offset), (2, 4, 10));
        assert_eq!(f.pos_of_offset(10), p);
        assert_eq!(f.line_text(2), "b: x");
        assert_eq!(f.line_text(9), "");
        // clamped, not a panic
        let p = f.pos(99, 99);
        assert_eq!(p.line, 3);
    }

    /// The slow, obvious conversions the indexes replace.
    fn naive_offset_of_char(text: &str, index: usize) -> usize {
        text.char_indices()
            .nth(index)
            .map_or(text.len(), |(i, _)| i)
    }

    fn naive_pos(text: &str, line: usize, col0: usize) -> Pos {
        let starts: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let line = line.clamp(1, starts.len());
        let start = starts[line - 1];
        let mut offset = start;
        for (n, (i, c)) in text[start..].char_indices().enumerate() {
            if n == col0 || c == '\n' {
                offset = start + i;
                break;
            }
            offset = start + i + c.len_utf8();
        }
        Pos {
            line: line as u32,
            column: col0 as u32 + 1,
            offset,
        }
    }

    #[test]
    fn indexes_agree_with_a_walk_from_the_start() {
        // Long lines with characters of every width, across many checkpoints.
        let mut text = String::new();
        for i in 0..700 {
            text.push(['a', 'é', '日', '😀', ' '][i % 5]);
            if i % 97 == 0 {
                text.push('\n');
            }
        }
        for ascii in [false, true] {
            let text = if ascii {
                text.chars()
                    .map(|c| if c.is_ascii() { c } else { 'x' })
                    .collect()
            } else {
                text.clone()
            };
            let f = SourceFile::new("t.yaml", text.as_str());
            let chars = text.chars().count();
            for index in 0..chars + 3 {
                let offset = naive_offset_of_char(&text, index);
                assert_eq!(f.offset_of_char(index), offset, "char {index}");
                let p = f.pos_of_offset(offset);
                let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
                let column = text[line_start..offset].chars().count() as u32 + 1;
                let line = text[..offset].matches('\n').count() as u32 + 1;
                assert_eq!((p.line, p.column, p.offset), (line, column, offset));
                assert_eq!(
                    f.pos_of_marker(index, line as usize, column as usize - 1),
                    p
                );
            }
            for line in 0..12 {
                for col0 in [0, 1, 5, 63, 64, 65, 96, 97, 98, 200] {
                    assert_eq!(f.pos(line, col0), naive_pos(&text, line, col0));
                }
            }
        }
    }

    #[test]
    fn markers_fall_back_to_line_and_column() {
        let f = SourceFile::new("t.yaml", "é: |\n  ééé\nb: 1\n");
        // An index that disagrees with its line and column (counted in bytes, say).
        let p = f.pos_of_marker(20, 3, 0);
        assert_eq!((p.line, p.column, p.offset), (3, 1, 15));
        // The end of the stream, on a line past the last one.
        let f = SourceFile::new("t.yaml", "a: [1");
        assert_eq!(f.pos_of_marker(5, 2, 0), f.pos(2, 0));
        // Carriage returns alone: the index is right, the parser's lines are not ours.
        let f = SourceFile::new("t.yaml", "a: 1\rbé: 2\r");
        let p = f.pos_of_marker(9, 2, 4);
        assert_eq!((p.line, p.column, p.offset), (1, 10, 10));
    }

    #[test]
    fn advance_stops_at_the_end_of_the_line() {
        let f = SourceFile::new("t.yaml", "ab é\r\nc\n");
        let start = f.pos(1, 0);
        let p = f.advance(start, 3);
        assert_eq!((p.line, p.column, p.offset), (1, 4, 3));
        let p = f.advance(start, 100);
        assert_eq!((p.line, p.column, p.offset), (1, 5, 5));
        let p = f.advance(f.pos(2, 0), 100);
        assert_eq!((p.line, p.column, p.offset), (2, 2, 8));
    }
}
