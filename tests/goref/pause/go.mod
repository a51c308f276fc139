// The pause (sandbox) program of the one-node cluster tests: no dependencies.
module lazyimage.test/goref/pause

go 1.24.0
