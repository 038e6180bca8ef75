"""Lightning callbacks any task can use: the averaged weights, the augmented-sample grid."""
