"""skymosaic.astrometry"""
