"""PIR passes of paddlenlp_ext, one per module; the functions are exported by ``paddlenlp_ext``."""
