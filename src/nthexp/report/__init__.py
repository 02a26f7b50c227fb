"""nthexp.report"""
