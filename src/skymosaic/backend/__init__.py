"""skymosaic.backend"""
