//! Captions to token ids: LAVIS's caption cleaning, then BERT WordPiece (`tokenizers`) with
//! `[DEC]` added, truncated and padded to a fixed length.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::util::error::{Error, Result};
use crate::util::host::int_tensor;

pub const DEC_TOKEN: &str = "[DEC]";

/// Token ids and attention mask, `[captions][max_len]` each.
pub type IdsAndMask = (Vec<Vec<i64>>, Vec<Vec<i64>>);

/// LAVIS `blip_caption`: lowercase, `.!"()*#:;~` become spaces, runs of whitespace collapse, ends
/// are trimmed, and at most `max_words` words are kept.
pub fn clean_caption(caption: &str, max_words: usize) -> String {
    let lowered: String = caption.to_lowercase().chars().map(|c| if ".!\"()*#:;~".contains(c) { ' ' } else { c }).collect();
    lowered.split_whitespace().take(max_words).collect::<Vec<_>>().join(" ")
}

pub struct TextEncoder {
    tokenizer: Tokenizer,
    pub max_len: usize,
    pub max_words: usize,
    pub dec_id: u32,
    pub vocab_size: usize,
    /// `[PAD]`, `[CLS]`, `[SEP]`, `[MASK]` and `[DEC]` where the vocabulary has them: left out of
    /// decoded text (a plain `vocab.txt` does not mark BERT's tokens as special).
    specials: Vec<u32>,
}

impl TextEncoder {
    /// `path`: a WordPiece `vocab.txt` (the BERT pipeline is built around it) or a `tokenizer.json`.
    pub fn load(path: &Path, max_len: usize, max_words: usize) -> Result<Self> {
        let fail = |e: tokenizers::Error| Error::file(path, format!("cannot load tokenizer: {e}"));
        let mut tokenizer = if path.extension().is_some_and(|e| e == "json") {
            Tokenizer::from_file(path).map_err(fail)?
        } else {
            let vocab = path.to_str().ok_or_else(|| Error::file(path, "path is not UTF-8"))?;
            let wordpiece = WordPiece::from_file(vocab).unk_token("[UNK]".into()).build().map_err(fail)?;
            let mut t = Tokenizer::new(wordpiece);
            t.with_normalizer(Some(BertNormalizer::new(true, true, None, true)));
            t.with_pre_tokenizer(Some(BertPreTokenizer));
            let id = |tok: &str| t.token_to_id(tok).ok_or_else(|| Error::file(path, format!("vocabulary lacks {tok}")));
            let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
            t.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
            t.with_decoder(Some(WordPieceDecoder::default()));
            t
        };
        let pad_id = tokenizer.token_to_id("[PAD]").ok_or_else(|| Error::file(path, "vocabulary lacks [PAD]"))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                direction: TruncationDirection::Right,
                stride: 0,
            }))
            .map_err(fail)?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            direction: PaddingDirection::Right,
            pad_id,
            pad_token: "[PAD]".into(),
            pad_type_id: 0,
            pad_to_multiple_of: None,
        }));
        tokenizer.add_special_tokens(&[AddedToken::from(DEC_TOKEN, true)]);
        let dec_id = tokenizer.token_to_id(DEC_TOKEN).ok_or_else(|| Error::file(path, "could not add [DEC]"))?;
        let vocab_size = tokenizer.get_vocab_size(true);
        let specials = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", DEC_TOKEN].iter().filter_map(|t| tokenizer.token_to_id(t)).collect();
        Ok(Self { tokenizer, max_len, max_words, dec_id, vocab_size, specials })
    }

    /// Cleans and encodes captions into `(ids, mask)` rows of `max_len`.
    pub fn encode(&self, captions: &[String]) -> Result<IdsAndMask> {
        let cleaned: Vec<String> = captions.iter().map(|c| clean_caption(c, self.max_words)).collect();
        let encodings =
            self.tokenizer.encode_batch(cleaned, true).map_err(|e| Error::input("caption", format!("tokenizer failed: {e}")))?;
        let ids = encodings.iter().map(|e| e.get_ids().iter().map(|&i| i64::from(i)).collect()).collect();
        let mask = encodings.iter().map(|e| e.get_attention_mask().iter().map(|&m| i64::from(m)).collect()).collect();
        Ok((ids, mask))
    }

    /// Token ids back to text, special tokens dropped and word pieces joined.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().filter_map(|&i| u32::try_from(i).ok()).filter(|i| !self.specials.contains(i)).collect();
        self.tokenizer.decode(&ids, true).map_err(|e| Error::input("ids", format!("tokenizer failed: {e}")))
    }

    /// The id of a token in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.tokenizer.token_to_id(token).map(i64::from)
    }
}

/// Token ids and padding mask, `[B][T]`, every row the same length.
#[derive(Clone, Debug, PartialEq)]
pub struct TextBatch {
    pub ids: Vec<Vec<i64>>,
    pub mask: Vec<Vec<i64>>,
}

impl TextBatch {
    /// Checks shapes and that ids fit the vocabulary.
    pub fn new(ids: Vec<Vec<i64>>, mask: Vec<Vec<i64>>, vocab_size: usize) -> Result<Self> {
        if ids.is_empty() {
            return Err(Error::input("input_ids", "empty batch"));
        }
        let t = ids[0].len();
        if t == 0 {
            return Err(Error::input("input_ids", "zero-length captions"));
        }
        if mask.len() != ids.len() || ids.iter().chain(&mask).any(|r| r.len() != t) {
            return Err(Error::input("attention_mask", "must have the shape of input_ids"));
        }
        if let Some(bad) = ids.iter().flatten().find(|&&id| id < 0 || id as usize >= vocab_size) {
            return Err(Error::input("input_ids", format!("id {bad} outside the vocabulary of {vocab_size}")));
        }
        if let Some(row) = mask.iter().position(|r| r[0] == 0) {
            return Err(Error::input("attention_mask", format!("row {row} masks its first token ([CLS])")));
        }
        Ok(Self { ids, mask })
    }

    pub fn batch_size(&self) -> usize {
        self.ids.len()
    }

    pub fn seq_len(&self) -> usize {
        self.ids[0].len()
    }

    /// The rows in the given order (texts of ITM pairs).
    pub fn select(&self, rows: &[usize]) -> Self {
        Self { ids: rows.iter().map(|&r| self.ids[r].clone()).collect(), mask: rows.iter().map(|&r| self.mask[r].clone()).collect() }
    }

    pub fn ids_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        int_tensor(&self.ids, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_matches_lavis() {
        assert_eq!(clean_caption("  A man (riding) a HORSE!!  on the beach.\n", 50), "a man riding a horse on the beach");
        assert_eq!(clean_caption("one two three four", 2), "one two");
        assert_eq!(clean_caption("~#*:;", 50), "");
    }

    #[test]
    fn bert_ids_and_dec_token() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bert-base-uncased-vocab.txt");
        let t = TextEncoder::load(&path, 16, 50).unwrap();
        assert_eq!((t.dec_id, t.vocab_size), (30522, 30523));
        let (ids, mask) = t.encode(&["A man riding a horse on the beach!".into()]).unwrap();
        // LAVIS cleaning removes the `!` (id 999) before tokenising.
        assert_eq!(ids[0][..10], [101, 1037, 2158, 5559, 1037, 3586, 2006, 1996, 3509, 102]);
        assert_eq!(ids[0][10..], [0; 6]);
        assert_eq!(mask[0].iter().sum::<i64>(), 10);
        let (long, _) = t.encode(&["word ".repeat(40)]).unwrap();
        assert_eq!((long[0].len(), long[0][15]), (16, 102));
        // Decoding gives the words back without [CLS], [SEP], padding or [DEC].
        let mut with_dec = ids[0].clone();
        with_dec[0] = 30522;
        for row in [&ids[0], &with_dec] {
            assert_eq!(t.decode(row).unwrap(), "a man riding a horse on the beach");
        }
    }
}
