"""Models behind small interfaces: `encoder` (bi-encoders), `generator` (query generators),
`loading` (checkpoint resolution), `device` (device/dtype), `offline_tokenizer` (a tokenizer
for random-weight checkpoints).

Import the submodule you need: this package imports no torch or transformers by itself.
"""
