"""Data: synthetic speech-summarization sets and the user's own recordings, in one format.

pools.py, numbers.py   entities from large pools; numbers/times/dates in written + spoken forms
documents.py           English procedural documents (7 genres) with their facts
multilingual.py        es/fr/de documents for the cross-lingual test split
styles.py              11 summary styles x 7 paraphrases (+ 3 ACLSum aspects), held-out flags,
                       targets rendered from facts
factcheck.py           no entity or number in a target that the document does not state
teacher.py             a teacher LLM writes transcripts from topic seeds and summary targets
corpus.py              a committed corpus of LLM-written documents + targets, and its command
aclsum.py              ACLSum papers read aloud, with their human summaries
tts.py                 espeak-ng and piper voices, TTS cache, per-sentence timestamps
synth.py               SynthConfig + synthesize(): the resumable, parallel pipeline
dataset.py, card.py    the on-disk format (Parquet manifest + FLAC) and the dataset card
user.py                user audio + transcripts (+ summaries) into the same format
"""
