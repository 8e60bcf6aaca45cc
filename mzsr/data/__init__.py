"""Training and test data: image sources and DIV2K downloads, HR patches cut from images, the HDF5
patch stores, the meta-learning task shards and the pre-training dataset."""
