"""nthexp.analysis"""
