"""nthexp.data"""
