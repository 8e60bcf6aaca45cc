"""Files: image I/O, atomic writes, weights files and the TensorFlow-1 checkpoint reader, released models."""
