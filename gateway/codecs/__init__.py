"""Pure binary codecs shared by drivers: checksums, field decoding and framing.

Serial frames and CoAP payloads describe their bytes with the same models
(``FieldSpec``, ``FrameSpec``, ``ChecksumSpec``); they live in core so that no
driver imports another. No I/O here.
"""
