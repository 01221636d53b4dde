"""The HDF5 logit cache: format, writer, reader."""
