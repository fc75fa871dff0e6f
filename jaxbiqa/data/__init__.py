"""The data layer: one record schema, readers for the IQA datasets and Q-Reasoning, the embedded
synthetic set, TFDS ArrayRecord builds and the grain input pipeline.

Modules (imported on use; this package imports nothing heavy):
* records: the schema, MOS normalisation table, bad-record policy (BadRecordError, SkipReport);
* sources: one reader per dataset format (`read_source(kind, path)`);
* synthetic: distorted crops of real photographs shipped in scikit-image / scikit-learn;
* images: decoding any image mode, the fixed pixel budget; access: random-access sources;
* tfds_builder: records <-> TFDS ArrayRecord; pipeline: grain (shuffle, shard, decode, batch, resume);
* options: the `data` config section (DataSection); data_cmd: `jaxbiqa data synth|build|inspect`.
"""
