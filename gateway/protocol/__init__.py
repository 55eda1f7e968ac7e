"""Pure codecs: bytes in, frames out. Nothing here does I/O."""
