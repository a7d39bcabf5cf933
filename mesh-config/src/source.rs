//! Source text and positions.
//!
//! Every diagnostic points at a file, a line and a column. The YAML parser reports
//! positions in characters; editors and terminals want 1-based lines and columns and the
//! renderer wants byte offsets, so a [`SourceFile`] keeps a line index to convert between
//! them once per file instead of rescanning the text for every diagnostic.

use std::sync::Arc;

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
    line_starts: Vec<usize>,
}

impl SourceFile {
    /// Wraps `text` under `name` (usually the path it was read from).
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Arc<Self> {
        let text = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Arc::new(SourceFile {
            name: name.into(),
            text,
            line_starts,
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

    /// The position of character column `col0` (0-based) on line `line` (1-based).
    ///
    /// Out-of-range values are clamped to the text, never a panic.
    pub fn pos(&self, line: usize, col0: usize) -> Pos {
        let line = line.clamp(1, self.line_starts.len());
        let start = self.line_starts[line - 1];
        let rest = self.text.get(start..).unwrap_or("");
        let mut offset = start;
        for (n, (i, c)) in rest.char_indices().enumerate() {
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
        let column = self.text[start..offset].chars().count() as u32 + 1;
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
}
